"""Prints, while bench/gpu_launches.py compiles, each fp32 pointwise node whose one user is a bf16 downcast read two or more
times: REAL <realised 0/1> <numel> <ops> <non-constant loads> <readers> <name>. Usage (repository root, at 76e1b42, before
the fix): nnUNet_compile=f python docs/measurements/2026-12-07d-cpu/count_realised_products.py --models S --patch 128
--batch 2 --upcast-per-use; output: realised_products_S_128x2.txt."""
import sys, runpy
import torch
import torch._inductor.graph as G
from torch._inductor.ir import ComputedBuffer, Pointwise
_run = G.GraphLowering.run_node
def run_node(self, node):
    result = _run(self, node)
    users = list(node.users)
    if (len(users) == 1 and users[0].target is torch.ops.prims.convert_element_type.default
            and users[0].args[1] == torch.bfloat16 and len(users[0].users) >= 2
            and node.meta.get("val") is not None and node.meta["val"].dtype == torch.float32):
        data = getattr(getattr(result, "data", None), "data", None)
        realised = isinstance(data, ComputedBuffer)
        pw = data.data if realised else data
        if isinstance(pw, Pointwise):
            oc = pw.inner_fn_opcount()
            print(f"REAL {int(realised)} {node.meta['val'].numel()} {oc.num_ops} {oc.nontrivial_read_count} {len(users[0].users)} {node.name}", flush=True)
    return result
G.GraphLowering.run_node = run_node
sys.argv = ["gpu_launches.py"] + sys.argv[1:]
runpy.run_path(str(__import__("pathlib").Path(__file__).resolve().parents[3] / "bench" / "gpu_launches.py"), run_name="__main__")
