"""danie_nnunet/upcast_per_use.py: shared upcasts of computed bf16 values split per use, so that Inductor stores the
bf16 value: fewer bytes, the eager function to bf16 rounding."""
from collections import Counter

import torch
from bench_scripts import load_bench_script

from danie_nnunet.compiled import danie_compile_context, store_values_before_upcasts, upcast_per_use
from danie_nnunet.upcast_per_use import UpcastPerUse, is_upcast_of_computed_value

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


def _gradients(net: torch.nn.Module, x: torch.Tensor, split: bool):
    torch._dynamo.reset()
    net.zero_grad(set_to_none=True)
    compiled = torch.compile(net)
    # the backward graph compiles at the first backward pass, inside the context; caches off, so that the pass runs
    with danie_compile_context(split), torch._inductor.config.patch(force_disable_caches=True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = compiled(x)
        loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}


def test_the_compiled_gradients_stay_as_close_to_eager_with_the_pass():
    # upcasting is exact; where the bf16 value is itself a downcast (BatchNorm's output under autocast) the stored
    # value is now rounded to bf16, as eager autocast rounds it, where the fused expression had skipped the rounding:
    # so the check is the bench's for a fast formulation (CHECK_FACTOR x the plain compile's distance from eager
    # + CHECK_FLOOR), not equality
    from danie_nnunet.bench import CHECK_FACTOR, CHECK_FLOOR
    torch.manual_seed(0)
    net, x = _ConvNormGelu(), torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net(x)
    loss.backward()
    eager = {name: p.grad.clone() for name, p in net.named_parameters()}
    before = upcast_per_use().split
    _, plain = _gradients(net, x, split=False)
    _, split = _gradients(net, x, split=True)
    assert upcast_per_use().split > before  # the BatchNorm backwards' shared upcasts of GELU's gradient

    def error(grad, name):
        return ((grad - eager[name]).norm() / eager[name].norm()).item()

    for name in eager:
        assert error(split[name], name) <= CHECK_FACTOR * error(plain[name], name) + CHECK_FLOOR, name
    torch._dynamo.reset()


def test_with_the_pass_a_gpu_kernel_no_longer_stores_the_fp32_gradient():
    # Inductor's Triton code for a GPU, generated on the CPU (bench/gpu_launches.py): the bytes its kernels move
    script = load_bench_script("gpu_launches")
    torch.manual_seed(0)
    net, x = _ConvNormGelu().to(memory_format=torch.channels_last), torch.randn(4, 3, 64, 64)
    x = x.to(memory_format=torch.channels_last)
    moved = {}
    for split in (False, True):
        torch._dynamo.reset()
        compiled = torch.compile(net)
        with script.gpu_code_on_cpu() as launches, danie_compile_context(split):
            for _ in range(2):  # the first compiles; the second is counted
                launches.clear()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = compiled(x)
                loss.backward()
        moved[split] = sum(n * launches.gigabytes[k] for k, n in Counter(launches).items())
    # GELU's gradient (4 x 16 x 64 x 64 per layer) stored in bf16, not fp32: 0.5 MB less per layer at least
    assert moved[False] - moved[True] > 2 * 4 * 16 * 64 * 64 * 2 / 1e9, moved
    torch._dynamo.reset()


def test_installed_process_wide_unless_another_pass_is():
    import torch._inductor.config as inductor_config
    with inductor_config.patch(post_grad_custom_post_pass=None):  # restored after
        assert store_values_before_upcasts() and inductor_config.post_grad_custom_post_pass is upcast_per_use()
        assert store_values_before_upcasts()  # again: a no-op
    other = UpcastPerUse()
    with inductor_config.patch(post_grad_custom_post_pass=other):
        assert not store_values_before_upcasts() and inductor_config.post_grad_custom_post_pass is other
    assert inductor_config.post_grad_custom_post_pass is None
