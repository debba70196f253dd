"""Why the first MaxViT stage's padded GELU gradient is stored in fp32 with DANIE_upcast_per_use (docs/performance.md,
2026-12-07, fourth session). Run from the repository root: `nnUNet_compile=f python
docs/measurements/2026-12-07d-cpu/padded_gelu_gradient.py` (CPU, about 2 minutes). Prints, for the compiled training
step of one padded MBConv-like block (Inductor's GPU code generated on the CPU, bench/gpu_launches.py): the bytes of
all its kernels and of those fusing the padding, without the pass, with it, and with it and the crop written as
slices; and, while lowering, the operation count and non-constant loads of GELU's gradient before and after its
bf16 downcast (Inductor realises a pointwise node over 30 operations with more than one non-constant load).
Output at 76e1b42, before the pass marked its downcasts: padded_gelu_gradient.txt; after (the pass's
DowncastStoredNotItsInput): padded_gelu_gradient_with_stored_downcasts.txt."""
import sys
from collections import Counter
from pathlib import Path

import torch
import torch._inductor.graph as inductor_graph
from torch._inductor.ir import ComputedBuffer, Pointwise

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from bench_scripts import load_bench_script  # noqa: E402
from danie_nnunet.compiled import danie_compile_context  # noqa: E402
from danie_nnunet.upcast_per_use import UpcastPerUse  # noqa: E402
# 1x1 convolution -> BatchNorm -> GELU -> TF-style 'same' padding -> stride-2 depthwise -> BatchNorm -> GELU
from test_upcast_per_use import _PaddedConvNormGelu as PaddedBlock  # noqa: E402


def crops_as_slices(graph: torch.fx.Graph) -> None:
    """constant_pad_nd with no positive pad (the padding's backward: a crop) as aten.slice per cropped dimension."""
    for node in list(graph.nodes):
        if node.target is not torch.ops.aten.constant_pad_nd.default or any(p > 0 for p in node.args[1]):
            continue
        source, pads = node.args[0], node.args[1]
        shape = source.meta["val"].shape
        with graph.inserting_before(node):
            cropped = source
            for i in range(len(pads) // 2):
                dim, low, high = len(shape) - 1 - i, -pads[2 * i], -pads[2 * i + 1]
                if low or high:
                    cropped = graph.call_function(torch.ops.aten.slice.Tensor, (cropped, dim, low, shape[dim] - high))
        node.replace_all_uses_with(cropped)
        graph.erase_node(node)


class SplitAndCrop(UpcastPerUse):
    def __call__(self, graph):
        crops_as_slices(graph)
        super().__call__(graph)


def report_gelu_gradient_lowering(lower):
    """Wraps GraphLowering.run_node: for each fp32 pointwise node whose one user is a bf16 downcast read three or more
    times (GELU's gradients, which BatchNorm's backward reads; also BatchNorm's outputs), prints what it lowers to: realised (stored in fp32) or not, and its
    operation count and non-constant loads."""
    def run_node(self, node):
        result = lower(self, node)
        users = list(node.users)
        if (len(users) == 1 and users[0].target is torch.ops.prims.convert_element_type.default
                and users[0].args[1] == torch.bfloat16 and len(users[0].users) >= 3
                and node.meta["val"].dtype == torch.float32):
            data = getattr(getattr(result, "data", None), "data", None)
            realised = isinstance(data, ComputedBuffer)
            pointwise = data.data if realised else data
            if not isinstance(pointwise, Pointwise):
                return result
            opcount = pointwise.inner_fn_opcount()
            print(f"  lowering {node.name} (downcast by {users[0].name}): "
                  f"{'realised (stored in fp32)' if realised else 'not realised'}, {opcount.num_ops} ops, "
                  f"{opcount.nontrivial_read_count} non-constant loads")
        return result
    return run_node


def main():
    script = load_bench_script("gpu_launches")
    inductor_graph.GraphLowering.run_node = report_gelu_gradient_lowering(inductor_graph.GraphLowering.run_node)
    torch.manual_seed(0)
    net = PaddedBlock().to(memory_format=torch.channels_last)
    x = torch.randn(4, 16, 64, 64).to(memory_format=torch.channels_last)
    for name, split in (("no pass", False), ("upcast per use", True), ("upcast per use, crop as slices", SplitAndCrop())):
        print(name)
        torch._dynamo.reset()
        compiled = torch.compile(net)
        patch = torch._inductor.config.patch(force_disable_caches=True)
        context = danie_compile_context(split) if isinstance(split, bool) else torch._inductor.config.patch(
            post_grad_custom_post_pass=split)
        with script.gpu_code_on_cpu() as launches, context, patch:
            for _ in range(2):  # the first compiles; the second is counted
                launches.clear()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = compiled(x)
                loss.backward()
        moved = {key[0]: n * launches.gigabytes[key] * 1e3 for key, n in Counter(launches).items()}
        padded = {k: round(v, 3) for k, v in moved.items() if "constant_pad_nd" in k}
        print(f"  {sum(moved.values()):.3f} MB in all; kernels fusing the padding: {padded}")


if __name__ == "__main__":
    main()
