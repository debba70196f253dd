"""A CPU stand-in for CUDA graph capture, with a graph's semantics (a static input and static outputs that every
replay overwrites), for the tests of danie_nnunet/cuda_graphs.py and of what uses it."""
from danie_nnunet.cuda_graphs import CapturedForward, CUDAGraphInference


class ReplayOnCPU:
    """Stands in for torch.cuda.CUDAGraph: replay() recomputes into the same static output tensors."""

    def __init__(self, forward, static_input, static_output):
        self.forward, self.static_input, self.static_output = forward, static_input, static_output

    def replay(self):
        out = self.forward(self.static_input)
        for dst, src in zip(self.static_output if isinstance(out, list) else [self.static_output],
                            out if isinstance(out, list) else [out]):
            dst.copy_(src)


class CPUGraphs(CUDAGraphInference):
    """The graph cache, capturing with ReplayOnCPU."""

    def _device_supported(self, x):
        return True

    def capture(self, forward, x):
        static_input = x.clone()
        static_output = forward(static_input)
        return CapturedForward(static_input, ReplayOnCPU(forward, static_input, static_output), static_output)
