"""danie_nnunet/upcast_per_use.py: shared upcasts of computed bf16 values split per use, so that Inductor stores the
bf16 value: fewer bytes, the eager function to bf16 rounding."""
from collections import Counter

import pytest
import torch
from bench_scripts import load_bench_script

from danie_nnunet.compiled import danie_compile_context, store_values_before_upcasts, upcast_per_use
from danie_nnunet.upcast_per_use import (STORED_DOWNCAST, DowncastStoredNotItsInput, UpcastPerUse, feeds_stored_downcast,
                                         is_upcast_of_computed_value)

convert = torch.ops.prims.convert_element_type.default


def _graph_with_shared_upcasts() -> torch.fx.Graph:
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    x.meta["val"] = torch.empty(4, dtype=torch.bfloat16)
    computed = graph.call_function(torch.ops.aten.tanh.default, (x,))
    computed.meta["val"] = torch.empty(4, dtype=torch.bfloat16)
    shared = graph.call_function(convert, (computed, torch.float32))
    of_input = graph.call_function(convert, (x, torch.float32))
    outputs = [graph.call_function(torch.ops.aten.mul.Tensor, (shared, s)) for s in (2.0, 3.0)]
    outputs += [graph.call_function(torch.ops.aten.sum.default, (shared,))]
    outputs += [graph.call_function(torch.ops.aten.mul.Tensor, (of_input, s)) for s in (2.0, 3.0)]
    graph.output(tuple(outputs))
    return graph


def test_each_use_of_an_upcast_of_a_computed_value_gets_its_own_upcast():
    graph = _graph_with_shared_upcasts()
    split = UpcastPerUse()
    split(graph)
    upcasts = [n for n in graph.nodes if n.target is convert]
    of_computed = [n for n in upcasts if is_upcast_of_computed_value(n)]
    assert split.split == 1 and len(of_computed) == 3 and all(len(n.users) == 1 for n in of_computed)
    # the bf16 value is now what is used several times; an upcast of a graph input is left shared
    assert len(next(n for n in graph.nodes if n.target is torch.ops.aten.tanh.default).users) == 3
    # and marked: Inductor is to store it, not the fp32 node it may be the downcast of
    assert next(n for n in graph.nodes if n.target is torch.ops.aten.tanh.default).meta[STORED_DOWNCAST]
    assert [len(n.users) for n in upcasts if not is_upcast_of_computed_value(n)] == [2]
    graph.lint()
    x = torch.randn(4, dtype=torch.bfloat16)
    expected = torch.fx.GraphModule(torch.nn.Module(), _graph_with_shared_upcasts())(x)
    for got, want in zip(torch.fx.GraphModule(torch.nn.Module(), graph)(x), expected):
        assert torch.equal(got, want)


class _ConvNormGelu(torch.nn.Module):
    """A CBA layer (danie_nnunet.layers) twice: GELU's bf16 gradient is upcast by BatchNorm's backward."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.GELU(approximate="tanh"),
            torch.nn.Conv2d(16, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.GELU(approximate="tanh"))

    def forward(self, x):
        return self.layers(x).float().square().mean()


class _PaddedConvNormGelu(torch.nn.Module):
    """A MaxViT first-stage MBConv's shape: 1x1 convolution, BatchNorm, GELU, TF-style 'same' padding, stride-2
    depthwise convolution, BatchNorm, GELU. GELU's gradient through the padding's backward has two non-constant
    loads and 34 operations: Inductor would store it in fp32 before its bf16 downcast (docs/performance.md)."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.expand = torch.nn.Conv2d(channels, channels, 1, bias=False)
        self.norm1, self.norm2 = torch.nn.BatchNorm2d(channels), torch.nn.BatchNorm2d(channels)
        self.act = torch.nn.GELU(approximate="tanh")
        self.depthwise = torch.nn.Conv2d(channels, channels, 3, stride=2, groups=channels, bias=False)

    def forward(self, x):
        y = self.act(self.norm1(self.expand(x)))
        y = self.depthwise(torch.nn.functional.pad(y, (0, 1, 0, 1)))
        return self.act(self.norm2(y)).float().square().mean()


def _gradients(net: torch.nn.Module, x: torch.Tensor, split: bool, weights=None, fuse: bool = False):
    torch._dynamo.reset()
    net.zero_grad(set_to_none=True)
    compiled = torch.compile(net)
    # the backward graph compiles at the first backward pass, inside the context; caches off, so that the pass runs
    with danie_compile_context(split, fuse), torch._inductor.config.patch(force_disable_caches=True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = compiled(x) if weights is None else weights(compiled, x)
        loss.backward()
    if weights is not None:
        weights.gradients_to_parameters()
    return loss.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}


@pytest.mark.parametrize("block, shape, copies, fuse", [(_ConvNormGelu, (2, 3, 16, 16), False, False),
                                                        (_PaddedConvNormGelu, (2, 16, 16, 16), False, False),
                                                        (_ConvNormGelu, (2, 3, 16, 16), True, False),
                                                        (_PaddedConvNormGelu, (2, 16, 16, 16), False, True)])
def test_the_compiled_gradients_stay_as_close_to_eager_with_the_pass(block, shape, copies, fuse):
    # upcasting is exact; where the bf16 value is itself a downcast (BatchNorm's output under autocast) the stored
    # value is now rounded to bf16, as eager autocast rounds it, where the fused expression had skipped the rounding:
    # so the check is the bench's for a fast formulation (CHECK_FACTOR x the plain compile's distance from eager
    # + CHECK_FLOOR), not equality; `copies`: both compiled steps on one bf16 copy of the weights, as
    # DANIE_cast_weights_once runs them (eager, the copies are bitwise autocast's casts: tests/test_weight_cast.py)
    from danie_nnunet.bench import CHECK_FACTOR, CHECK_FLOOR
    from danie_nnunet.weight_cast import LowPrecisionWeights
    torch.manual_seed(0)
    net, x = block(), torch.randn(*shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net(x)
    loss.backward()
    eager = {name: p.grad.clone() for name, p in net.named_parameters()}
    weights = LowPrecisionWeights.record(net, lambda: net(x), "cpu") if copies else None
    assert not copies or len(weights) == 2
    before = upcast_per_use().split
    _, plain = _gradients(net, x, split=False, weights=weights)
    # `fuse`: the split step also with compiled.LARGER_FUSIONS (the opcount threshold replaces the CPU's too)
    _, split = _gradients(net, x, split=True, weights=weights, fuse=fuse)
    assert upcast_per_use().split > before  # the BatchNorm backwards' shared upcasts of GELU's gradient

    def error(grad, name):
        return ((grad - eager[name]).norm() / eager[name].norm()).item()

    for name in eager:
        assert error(split[name], name) <= CHECK_FACTOR * error(plain[name], name) + CHECK_FLOOR, name
    torch._dynamo.reset()


def _gpu_bytes_moved(net: torch.nn.Module, x: torch.Tensor, copies: bool = False, fuse: bool = False) -> dict:
    """GB the compiled training step's kernels move, and how many kernels it launches, without and with the pass:
    Inductor's Triton code for a GPU, generated on the CPU (bench/gpu_launches.py); `copies`: the step runs on
    one bf16 copy of the weights (DANIE_cast_weights_once, danie_nnunet/weight_cast.py); `fuse`: compiled with
    Inductor's realise thresholds raised (DANIE_larger_fusions, compiled.LARGER_FUSIONS)."""
    from danie_nnunet.weight_cast import LowPrecisionWeights
    script = load_bench_script("gpu_launches")
    net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    weights = LowPrecisionWeights.record(net, lambda: net(x), "cpu") if copies else None
    moved, launched = {}, {}
    for split in (False, True):
        torch._dynamo.reset()
        compiled = torch.compile(net)
        with script.gpu_code_on_cpu() as launches, danie_compile_context(split, fuse):
            for _ in range(2):  # the first compiles; the second is counted
                launches.clear()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = compiled(x) if weights is None else weights(compiled, x)
                loss.backward()
                if weights is not None:
                    weights.gradients_to_parameters()
        moved[split] = sum(n * launches.gigabytes[k] for k, n in Counter(launches).items())
        launched[split] = sum(launches.values())
    torch._dynamo.reset()
    return {**moved, "launches": launched, "copied": len(weights) if weights is not None else 0}


def _conv_norm_gelu_bytes_moved(copies: bool, fuse: bool = False) -> dict:
    torch.manual_seed(0)
    return _gpu_bytes_moved(_ConvNormGelu(), torch.randn(4, 3, 64, 64), copies, fuse)


@pytest.fixture(scope="module")
def conv_norm_gelu_bytes() -> dict:
    """_gpu_bytes_moved of a CBA stack with autocast's weight casts, measured once for the tests that read it."""
    return _conv_norm_gelu_bytes_moved(copies=False)


def test_with_the_pass_a_gpu_kernel_no_longer_stores_the_fp32_gradient(conv_norm_gelu_bytes):
    moved = conv_norm_gelu_bytes
    # GELU's gradient (4 x 16 x 64 x 64 per layer) stored in bf16, not fp32: 0.5 MB less per layer at least
    assert moved[False] - moved[True] > 2 * 4 * 16 * 64 * 64 * 2 / 1e9, moved


def test_the_pass_and_the_weight_copies_compose(conv_norm_gelu_bytes):
    # DANIE_upcast_per_use with DANIE_cast_weights_once (the bench's cl+wcopy+up): the convolutions read the
    # step's bf16 weight copies, and GELU's gradient is still stored in bf16; the copies' launches are gone either way
    copied, cast = _conv_norm_gelu_bytes_moved(copies=True), conv_norm_gelu_bytes
    assert copied["copied"] == 2  # both convolutions' weights
    assert copied[False] - copied[True] > 2 * 4 * 16 * 64 * 64 * 2 / 1e9, copied
    assert copied["launches"][True] < cast["launches"][True], (copied, cast)


def test_larger_fusions_recompute_the_fp32_intermediates_the_backward_stored(conv_norm_gelu_bytes):
    # DANIE_larger_fusions (compiled.LARGER_FUSIONS): BatchNorm's output and GELU's gradient are recomputed in the
    # kernels that read them instead of stored in fp32 between them (16.2 -> 9.4 MB on this stack, with the pass;
    # the pass then changes nothing, as nothing it split is stored), in fewer kernels
    fused = _conv_norm_gelu_bytes_moved(copies=False, fuse=True)
    assert fused[True] < 0.75 * conv_norm_gelu_bytes[True], (fused, conv_norm_gelu_bytes)
    assert fused["launches"][True] < conv_norm_gelu_bytes["launches"][True], (fused, conv_norm_gelu_bytes)


def test_a_downcast_the_pass_split_is_stored_not_the_long_fp32_expression_before_it():
    # through the padding's backward GELU's gradient is a 34-operation fp32 expression with two non-constant loads,
    # which Inductor stores before its downcast unless DowncastStoredNotItsInput lowers it: with that, 14.17 ->
    # 12.07 MB for this step, against 15.87 MB without the pass (the split alone saves 1.7 MB, under the bound)
    assert DowncastStoredNotItsInput.install()
    torch.manual_seed(0)
    moved = _gpu_bytes_moved(_PaddedConvNormGelu(), torch.randn(4, 16, 64, 64))
    assert moved[False] - moved[True] > 5 * 4 * 16 * 64 * 64 * 2 / 1e9, moved


def test_only_the_fp32_input_of_a_marked_downcast_is_lowered_without_the_threshold():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    x.meta["val"] = torch.empty(4)
    product = graph.call_function(torch.ops.aten.mul.Tensor, (x, x))
    product.meta["val"] = torch.empty(4)
    downcast = graph.call_function(convert, (product, torch.bfloat16))
    downcast.meta["val"] = torch.empty(4, dtype=torch.bfloat16)
    graph.output((graph.call_function(convert, (downcast, torch.float32)),
                  graph.call_function(convert, (downcast, torch.float32))))
    assert not feeds_stored_downcast(product)  # not marked yet
    downcast.meta[STORED_DOWNCAST] = True
    assert feeds_stored_downcast(product) and not feeds_stored_downcast(downcast) and not feeds_stored_downcast(x)


def test_installed_process_wide_unless_another_pass_is():
    import torch._inductor.config as inductor_config
    with inductor_config.patch(post_grad_custom_post_pass=None):  # restored after
        assert store_values_before_upcasts() and inductor_config.post_grad_custom_post_pass is upcast_per_use()
        assert store_values_before_upcasts()  # again: a no-op
    other = UpcastPerUse()
    with inductor_config.patch(post_grad_custom_post_pass=other):
        assert not store_values_before_upcasts() and inductor_config.post_grad_custom_post_pass is other
    assert inductor_config.post_grad_custom_post_pass is None
