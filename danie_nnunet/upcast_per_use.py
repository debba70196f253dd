"""An Inductor graph pass: a bf16 (or fp16) value that several ops upcast to fp32 is stored by Inductor in bf16,
not as its fp32 copy.

A compiled backward of BatchNorm after GELU, as DANIE's MBConv blocks and CBA layers have it: autograd's GELU
backward gives a bf16 gradient, and the decomposition of BatchNorm's backward upcasts it to fp32 once and reads the
upcast three times (its two per-channel sums and the input gradient). Inductor fuses the upcast into the GELU
backward and, the node having several users, stores the fused result: the upcast, in fp32. At DANIE-L's first
stage that is a 12 x 384 x 256 x 256 fp32 gradient, 1.2 GB written and 2.4 GB read where the bf16 value would be
half. This pass gives each user of such an upcast its own copy of the upcast node, so that the bf16 value is the
node with several users, the one Inductor stores, and each copy is inlined into its reader. (Inductor's
realisation rule, `torch/_inductor/graph.py`: a node with several users is stored when it is expensive to
recompute.)

Upcasting is exact, so a gradient stored in bf16 and upcast by its readers gives the same numbers. Where the bf16
value is itself a downcast (a BatchNorm's output under autocast, upcast again by the GELU after it), Inductor had
skipped the rounding inside the fused expression (it elides downcast-upcast pairs); stored, the value is rounded to
bf16 as eager autocast rounds it. So the pass is the eager function to bf16 rounding, as Inductor is without it
(tests/test_upcast_per_use.py holds it to the bench's check of a fast formulation).

Only upcasts of a computed value (not of a graph input or a library call's output, already in memory either way)
are split. Installed as Inductor's `post_grad_custom_post_pass` (`danie_nnunet.compiled`).

Where the bf16 value is the downcast of a long fp32 expression (GELU's gradient recomputing BatchNorm's output and
GELU, with two or more non-constant loads), Inductor's lowering stores that fp32 expression before the downcast is
lowered: `torch/_inductor/graph.py` realises a pointwise node over `realize_opcount_threshold` (30 on a GPU)
operations with more than one non-constant load, and the downcast is then inlined into each reader, which reads fp32
(docs/performance.md, 2026-12-07). So the split downcasts are marked, and `DowncastStoredNotItsInput` lowers the one
fp32 input of a marked downcast with a threshold of 100 operations (graph.py's own limit against deep
recursion) in place of 30: the rule then stores the downcast, in bf16. The lowering
hook is Inductor's private `GraphLowering.run_node`, wrapped once per process; it acts on marked nodes only, and is
not installed where that method is missing.
"""
from __future__ import annotations

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

LOW_PRECISION = (torch.bfloat16, torch.float16)
STORED_DOWNCAST = "danie_stored_downcast"  # node.meta key: a downcast whose upcasts this pass split
# graph.py stores a pointwise node over 100 operations whatever the threshold (against deep recursion): kept
OPS_BEFORE_A_STORED_DOWNCAST = 100


def is_upcast_of_computed_value(node: torch.fx.Node) -> bool:
    """`node` upcasts a bf16/fp16 value computed in the graph (by a pointwise or reduction op) to fp32."""
    if node.op != "call_function" or node.target is not torch.ops.prims.convert_element_type.default:
        return False
    source, dtype = node.args[0], node.args[1]
    value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    return (dtype == torch.float32 and isinstance(value, torch.Tensor) and value.dtype in LOW_PRECISION
            and source.op == "call_function")


class UpcastPerUse(CustomGraphPass):
    """Gives each user of a shared upcast of a computed bf16/fp16 value its own upcast node; `split`: how many
    shared upcasts it has split in all (each graph it ran on)."""

    def __init__(self) -> None:
        self.split = 0

    def __call__(self, graph: torch.fx.Graph) -> None:
        DowncastStoredNotItsInput.install()
        for node in list(graph.nodes):
            users = list(node.users)
            if len(users) < 2 or not is_upcast_of_computed_value(node):
                continue
            self.split += 1
            node.args[0].meta[STORED_DOWNCAST] = True
            for user in users[1:]:
                with graph.inserting_before(user):
                    upcast = graph.call_function(node.target, node.args, node.kwargs)
                upcast.meta.update(node.meta)
                user.replace_input_with(node, upcast)

    def uuid(self) -> bytes:  # Inductor's cache key: the pass is this file
        return get_hash_for_files((__file__,))


def feeds_stored_downcast(node: torch.fx.Node) -> bool:
    """`node`'s only user is a downcast `UpcastPerUse` split the upcasts of, and `node` is computed in fp32."""
    users = list(node.users)
    value = node.meta.get("val")
    return (len(users) == 1 and users[0].meta.get(STORED_DOWNCAST, False) and node.op == "call_function"
            and isinstance(value, torch.Tensor) and value.dtype == torch.float32)


class DowncastStoredNotItsInput:
    """Wraps Inductor's `GraphLowering.run_node` (once per process): a node that `feeds_stored_downcast` is lowered
    with a `realize_opcount_threshold` of 100, not 30, so that Inductor stores its downcast (bf16) rather than it (fp32)."""

    installed = False

    @classmethod
    def install(cls) -> bool:
        if cls.installed:
            return True
        import torch._inductor.config as inductor_config
        from torch._inductor.graph import GraphLowering
        lower = getattr(GraphLowering, "run_node", None)
        if lower is None or not hasattr(inductor_config, "realize_opcount_threshold"):
            return False

        def run_node(graph_lowering, node):
            if not feeds_stored_downcast(node):
                return lower(graph_lowering, node)
            with inductor_config.patch(realize_opcount_threshold=OPS_BEFORE_A_STORED_DOWNCAST):
                return lower(graph_lowering, node)

        GraphLowering.run_node = run_node
        cls.installed = True
        return True
