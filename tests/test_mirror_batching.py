"""Test-time mirroring in one batch (danie_nnunet/mirror_batching.py): nnU-Net's own predictor mirroring a DANIE
that batches a tile with its flips gets what it gets from the plain network, in fewer forwards."""
import copy
import pickle

import pytest
import torch

from danie_nnunet import create_danie
from danie_nnunet.mirror_batching import MISSES_TO_STOP, MirrorBatching
from cpu_graphs import CPUGraphs  # tests/cpu_graphs.py (tests/ is on sys.path: conftest.py)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_danie("S", (32, 32), 1, 3).double().eval()


class _Counting:
    """Counts the network's forwards that run (not the calls answered from a batch) and the slices they run."""

    def __init__(self, network):
        self.forwards, self.slices = 0, 0
        self.inner, network._forward = network._forward, self

    def __call__(self, x):
        self.forwards += 1
        self.slices += x.shape[0]
        return self.inner(x)


def _predictor(network, use_mirroring=True):
    """nnU-Net 2.8.1's own predictor, its mirroring and network calls unchanged."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.network, predictor.allowed_mirroring_axes = network, (0, 1)
    return predictor


def _tiles(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 1, 32, 32, generator=g, dtype=torch.float64) for _ in range(n)]


def test_nnunet_mirroring_gets_the_plain_networks_predictions_from_one_forward_per_tile(net):
    batched = copy.deepcopy(net).set_mirror_batching()
    count = _Counting(batched)
    with torch.inference_mode():
        for tile in _tiles(2):
            expected = _predictor(net)._internal_maybe_mirror_and_predict(tile)
            got = _predictor(batched)._internal_maybe_mirror_and_predict(tile)
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # one forward of four slices per tile; the three flips were answered from it
    assert (count.forwards, count.slices) == (2, 8)
    assert (batched.mirror_batching.batches, batched.mirror_batching.hits) == (2, 6)
    assert not batched.mirror_batching.kept


def test_a_predictor_that_does_not_mirror_stops_the_batching(net):
    batched = copy.deepcopy(net).set_mirror_batching()
    count = _Counting(batched)
    predictor = _predictor(batched, use_mirroring=False)
    with torch.inference_mode():
        for tile in _tiles(MISSES_TO_STOP + 3):
            torch.testing.assert_close(predictor._internal_maybe_mirror_and_predict(tile), net(tile),
                                       rtol=1e-12, atol=1e-12)
    # the first tiles ran as batches of four until their flips went unasked; the rest, one slice each
    assert batched.mirror_batching.stopped and not batched.mirror_batching.kept
    assert count.slices == 4 * MISSES_TO_STOP + 3 and count.forwards == MISSES_TO_STOP + 3


def test_an_input_that_only_looks_like_a_flip_gets_its_own_forward(net):
    batched = copy.deepcopy(net).set_mirror_batching()
    tile, other = _tiles(2)
    near_flip = torch.flip(tile, (3,)).clone()
    near_flip[0, 0, 0, 0] += 1e-9  # not bitwise equal: computed for itself
    with torch.inference_mode():
        batched(tile)
        torch.testing.assert_close(batched(near_flip), net(near_flip), rtol=1e-12, atol=1e-12)
        assert batched.mirror_batching.hits == 0 and batched.mirror_batching.batches == 2


def test_training_autograd_and_batches_run_as_before(net):
    batched = copy.deepcopy(net).set_mirror_batching()
    count = _Counting(batched)
    tile = _tiles(1)[0]
    with torch.no_grad():  # a batch of two, as nnU-Net's online validation runs batches
        batched(torch.cat([tile, tile]))
    batched(tile)  # autograd on
    batched.train()
    with torch.no_grad():
        batched(torch.cat([tile, tile]))
    assert count.slices == 5 and batched.mirror_batching.batches == 0


def test_copies_start_empty_with_the_same_settings(net):
    batched = copy.deepcopy(net).set_mirror_batching()
    with torch.inference_mode():
        batched(_tiles(1)[0])
    assert len(batched.mirror_batching.kept) == 3
    for clone in (copy.deepcopy(batched), pickle.loads(pickle.dumps(batched))):
        assert isinstance(clone.mirror_batching, MirrorBatching) and not clone.mirror_batching.kept
    assert copy.deepcopy(net).set_mirror_batching(False).mirror_batching is None


def test_with_cuda_graphs_the_batch_of_four_gets_a_graph_of_its_own(net):
    batched = copy.deepcopy(net).set_mirror_batching().set_cuda_graphs()
    batched.cuda_graphs = CPUGraphs()
    with torch.inference_mode():
        for tile in _tiles(2):
            expected = _predictor(net)._internal_maybe_mirror_and_predict(tile)
            torch.testing.assert_close(_predictor(batched)._internal_maybe_mirror_and_predict(tile), expected,
                                       rtol=1e-12, atol=1e-12)
        assert [k[0] for k in batched.cuda_graphs.graphs] == [(4, 1, 32, 32)]
        assert batched.cuda_graphs.max_batch == 1  # single slices of other callers: as before
        batched.set_mirror_batching(False)(_tiles(1)[0])
    assert sorted(k[0] for k in batched.cuda_graphs.graphs) == [(1, 1, 32, 32), (4, 1, 32, 32)]
