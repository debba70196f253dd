"""CUDA graph inference (danie_nnunet/cuda_graphs.py): when it captures, what it returns, when it captures again.

CUDA itself is not on this machine: the cache runs here with a CPU stand-in that has a graph's semantics (a static
input and static outputs that every replay overwrites). `danie-nnunet bench` and `bench/gpu_checks.sh` compare
real graphs with the eager network on a GPU.
"""
import copy
import pickle

import pytest
import torch

from danie_nnunet import create_danie
from danie_nnunet.cuda_graphs import CUDAGraphInference
from cpu_graphs import CPUGraphs  # tests/cpu_graphs.py (tests/ is on sys.path: conftest.py)


class _FailingCapture(CUDAGraphInference):
    def _device_supported(self, x):
        return True

    def capture(self, forward, x):
        raise RuntimeError("operation not permitted when stream is capturing")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    network = create_danie("S", (64, 64), 1, 3).eval()
    return network


def _graphed(net, cache=CPUGraphs, max_batch=1):
    graphed = copy.deepcopy(net)
    graphed.set_cuda_graphs(max_batch=max_batch)
    graphed.cuda_graphs = cache(graphed.cuda_graphs.max_batch, graphed.cuda_graphs.max_graphs)
    return graphed


def test_graphed_inference_returns_the_eager_outputs_as_copies(net):
    graphed = _graphed(net)
    a, b = torch.randn(1, 1, 64, 64), torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        out_a = graphed(a)
        assert torch.equal(out_a, net(a))
        out_a += 1  # nnU-Net adds the mirrored predictions into the first output in place
        kept = out_a.clone()
        out_b = graphed(b)
        assert torch.equal(out_b, net(b))  # the in-place change did not reach the static output
        assert torch.equal(out_a, kept)  # and the replay did not overwrite the first output
    assert graphed.cuda_graphs.captures == 1


def test_a_new_signature_is_a_new_capture_and_the_oldest_is_dropped(net):
    graphed = _graphed(net, max_batch=2)
    graphed.cuda_graphs.max_graphs = 2
    with torch.no_grad():
        graphed(torch.randn(1, 1, 64, 64))
        graphed(torch.randn(2, 1, 64, 64))  # batch
        graphed.deep_supervision = True
        outputs = graphed(torch.randn(2, 1, 64, 64))  # output mode
        assert isinstance(outputs, list) and len(outputs) == 5
        graphed.deep_supervision = False
        default = torch.get_autocast_dtype("cuda")
        torch.set_autocast_dtype("cuda", torch.bfloat16 if default != torch.bfloat16 else torch.float16)
        try:  # autocast state (what DANIETrainer sets)
            graphed(torch.randn(2, 1, 64, 64))
        finally:
            torch.set_autocast_dtype("cuda", default)
        graphed(torch.randn(1, 1, 128, 64))  # input size
    assert graphed.cuda_graphs.captures == 5 and len(graphed.cuda_graphs.graphs) == 2


def test_weights_loaded_in_place_are_replayed_and_replaced_weights_recaptured(net):
    graphed = _graphed(net)
    x = torch.randn(1, 1, 64, 64)
    torch.manual_seed(1)
    other = create_danie("S", (64, 64), 1, 3).eval()
    with torch.inference_mode():
        graphed(x)
        graphed.load_state_dict(other.state_dict())  # as nnU-Net's predictor loads the next fold: in place
        assert torch.equal(graphed(x), other(x))
        assert graphed.cuda_graphs.captures == 1
        graphed.load_state_dict(net.state_dict(), assign=True)  # new tensors
        assert torch.equal(graphed(x), net(x))
        assert graphed.cuda_graphs.captures == 2 and len(graphed.cuda_graphs.graphs) == 1


def test_training_autograd_and_large_batches_run_eagerly(net):
    graphed = _graphed(net)
    x = torch.randn(1, 1, 64, 64)
    graphed(x)  # autograd on
    with torch.no_grad():
        graphed(torch.randn(graphed.cuda_graphs.max_batch + 1, 1, 64, 64))
        graphed.train()
        graphed(torch.randn(2, 1, 64, 64))
        graphed.eval()
    assert graphed.cuda_graphs.captures == 0
    real = copy.deepcopy(net).set_cuda_graphs()
    with torch.no_grad():  # the real cache on CPU tensors: not CUDA, eager
        assert torch.equal(real(x), net(x)) and real.cuda_graphs.captures == 0


def test_a_failed_capture_warns_once_and_runs_eagerly(net):
    graphed = _graphed(net, _FailingCapture)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
            out = graphed(x)
        assert torch.equal(out, net(x))
        assert graphed.cuda_graphs.failed and not graphed.cuda_graphs.applies(graphed, x)


def test_bad_input_gets_the_networks_message_not_a_capture_error(net):
    graphed = _graphed(net)
    with torch.no_grad(), pytest.raises(ValueError, match="expects a"):
        graphed(torch.randn(1, 2, 64, 64))
    assert graphed.cuda_graphs.captures == 0


def test_copies_start_with_an_empty_cache_and_the_same_settings(net):
    graphed = _graphed(net)
    graphed.set_cuda_graphs(max_batch=2, max_graphs=3)
    graphed.cuda_graphs.captures = 7
    for copied in (copy.deepcopy(graphed), pickle.loads(pickle.dumps(graphed))):
        assert (copied.cuda_graphs.max_batch, copied.cuda_graphs.max_graphs) == (2, 3)
        assert copied.cuda_graphs.captures == 0 and not copied.cuda_graphs.graphs
    assert graphed.set_cuda_graphs(False).cuda_graphs is None
    with pytest.raises(ValueError, match="max_batch"):
        graphed.set_cuda_graphs(max_batch=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (danie-nnunet bench checks it there)")
def test_real_cuda_graphs_match_eager_inference_as_the_predictor_runs_it(net):
    eager = copy.deepcopy(net).cuda().set_channels_last()
    graphed = copy.deepcopy(eager).set_cuda_graphs()
    x = torch.randn(1, 1, 64, 64, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        first = graphed(x)
        mirrored = graphed(torch.flip(x, (3,)))
        assert graphed.cuda_graphs.captures == 1
        for out, ref in ((first, eager(x)), (mirrored, eager(torch.flip(x, (3,))))):
            assert ((out.float() - ref.float()).norm() / ref.float().norm()).item() < 1e-3
