"""CUDA graphs for DANIE's inference on single tiles: one launch per forward instead of hundreds.

nnU-Net's predictor runs the network on one tile at a time (batch 1), once more per mirrored copy with test-time
mirroring (4 calls per 2D tile). One eager DANIE forward dispatches about 800 operators from Python, S and L
alike (the U-Net: 63; `danie-nnunet bench`'s operator column, counted on CPU), so at batch 1, where each kernel
is short, the CPU's launch work rather than the GPU bounds single-tile inference. A captured CUDA graph replays
all of a forward's kernels with one call: on an H100 DANIE-L went from 37.2 to 105.9 tiles/s, output equal to
eager (`danie-nnunet bench`, docs/performance.md).

The same function: a replay runs the kernels that the eager forward ran, captured on the same weights, and reads
the weights from their memory at replay, so in-place changes are seen (nnU-Net's predictor loads each fold's
weights with load_state_dict, which copies in place). Weights that are replaced by new tensors (`.to()`,
`load_state_dict(assign=True)`, a reassigned parameter) and changes of input shape, dtype, device, autocast or
the network's output mode are a new signature and a new capture. Each call returns copies of the graph's static
outputs (the predictor adds the mirrored predictions into the first one in place).

Used only where it applies: eval mode, no autograd, CUDA inputs of at most `max_batch` slices (default 1: the
predictor's tiles; a graph keeps its forward's memory, which training's validation batches should not hold on
to), outside torch.compile (which has its own graphs) and outside another capture. A forward that cannot be
captured warns once and then runs eagerly.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, Tuple

import torch
from torch import nn

WARMUP_RUNS = 2  # eager runs on a side stream before capture: cuDNN's algorithm search and lazy initialisation


def _clone_outputs(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (list, tuple)):
        return type(out)(_clone_outputs(o) for o in out)
    raise TypeError(f"CUDA graph inference supports tensor, list or tuple outputs, got {type(out).__name__}")


class CapturedForward:
    """One captured forward: its static input, the graph (anything with `replay()`) and its static outputs."""

    def __init__(self, static_input: torch.Tensor, graph, static_output: Any):
        self.static_input, self.graph, self.static_output = static_input, graph, static_output

    def __call__(self, x: torch.Tensor) -> Any:
        self.static_input.copy_(x)
        self.graph.replay()
        return _clone_outputs(self.static_output)


class _GraphOnItsDevice:
    """A CUDA graph replayed on the current stream of the device it was captured on (not the current device)."""

    def __init__(self, graph: "torch.cuda.CUDAGraph", device: torch.device):
        self.graph, self.device = graph, device

    def replay(self) -> None:
        with torch.cuda.device(self.device):
            self.graph.replay()


def capture_cuda_graph(forward: Callable[[torch.Tensor], Any], x: torch.Tensor) -> CapturedForward:
    """Warm up on a side stream, then capture `forward(x)` in the autocast state of the caller."""
    amp_enabled, amp_dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")

    def autocast():  # autocast's weight-cast cache would hand the graph tensors that die with the outer region
        return torch.autocast("cuda", dtype=amp_dtype, enabled=amp_enabled, cache_enabled=False)

    with torch.cuda.device(x.device):
        static_input = torch.empty_like(x, memory_format=torch.contiguous_format).copy_(x)
        caller, side = torch.cuda.current_stream(), torch.cuda.Stream()
        side.wait_stream(caller)
        with torch.cuda.stream(side), autocast():
            for _ in range(WARMUP_RUNS):
                forward(static_input)
        caller.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: CUDA calls of other threads (pinned-memory copies of a data loader) may go on meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"), autocast():
                static_output = forward(static_input)
        except BaseException:
            torch.cuda.set_stream(caller)  # a failed capture_end leaves torch.cuda.graph's capture stream current
            raise
    return CapturedForward(static_input, _GraphOnItsDevice(graph, x.device), static_output)


class CUDAGraphInference:
    """Per-network cache of captured forwards, keyed by the call's signature (least recently used dropped first).

    Not part of the module's state: copies (deepcopy, pickle) start with an empty cache and the same settings.
    """

    def __init__(self, max_batch: int = 1, max_graphs: int = 4):
        if max_batch < 1 or max_graphs < 1:
            raise ValueError(f"max_batch and max_graphs must be >= 1, got {max_batch} and {max_graphs}")
        self.max_batch, self.max_graphs = max_batch, max_graphs
        self.graphs: "OrderedDict[Hashable, CapturedForward]" = OrderedDict()
        self.captured_weights: Tuple[int, ...] = ()
        self._tensor_dicts = None
        self.failed = False
        self.captures = 0

    def __getstate__(self) -> dict:
        return {"max_batch": self.max_batch, "max_graphs": self.max_graphs}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __deepcopy__(self, memo) -> "CUDAGraphInference":
        return CUDAGraphInference(self.max_batch, self.max_graphs)

    def _device_supported(self, x: torch.Tensor) -> bool:
        return x.is_cuda and not torch.cuda.is_current_stream_capturing()

    def applies(self, module: nn.Module, x: torch.Tensor, max_batch: Optional[int] = None) -> bool:
        """`max_batch` overrides the cache's own for one call (a mirrored tile's batch of four)."""
        # is_compiling first: under torch.compile (the trainers compile on CUDA) it is a constant False for Dynamo
        return (not torch.compiler.is_compiling() and not self.failed and not module.training
                and not torch.is_grad_enabled() and x.shape[0] <= (max_batch or self.max_batch)
                and self._device_supported(x))

    def weights(self, module: nn.Module) -> Tuple[int, ...]:
        # their addresses: a graph reads the memory it was captured on, so new tensors need new captures. The
        # modules' tensor dicts are listed once (walking the module tree costs 1 ms a call); DANIE's is fixed
        if self._tensor_dicts is None:
            self._tensor_dicts = [d for m in module.modules() for d in (m._parameters, m._buffers) if d]
        return tuple(t.data_ptr() for d in self._tensor_dicts for t in d.values() if t is not None)

    @staticmethod
    def signature(x: torch.Tensor, extra: Tuple = ()) -> Hashable:
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        return (tuple(x.shape), x.dtype, x.device, torch.is_inference_mode_enabled(), autocast, extra)

    def capture(self, forward: Callable[[torch.Tensor], Any], x: torch.Tensor) -> CapturedForward:
        return capture_cuda_graph(forward, x)

    def __call__(self, module: nn.Module, forward: Callable[[torch.Tensor], Any], x: torch.Tensor,
                 extra: Tuple = ()) -> Any:
        weights = self.weights(module)
        if weights != self.captured_weights:  # graphs of replaced weights are of no further use: free their memory
            self.graphs.clear()
            self.captured_weights = weights
        key = self.signature(x, extra)
        captured = self.graphs.get(key)
        if captured is None:
            try:
                captured = self.capture(forward, x)
            except Exception as e:  # noqa: BLE001 - any capture failure: eager from now on, said once
                self.failed = True
                self.graphs.clear()
                warnings.warn(f"DANIE: CUDA graph capture failed ({type(e).__name__}: {e}); inference runs eagerly "
                              f"(same results; DANIE_cuda_graphs=f makes the DANIE trainers skip the attempt)",
                              RuntimeWarning, stacklevel=3)
                return forward(x)
            self.captures += 1
            self.graphs[key] = captured
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        return captured(x)
