"""What the compiled DANIE's backward receives from its forward, by dtype, under CPU bf16 autocast (fp32 weights)."""
import sys, collections, torch
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func
from torch._functorch.partitioners import min_cut_rematerialization_partition
from torch._inductor.decomposition import select_decomp_table
from danie_nnunet.network import create_danie

model, patch = sys.argv[1], int(sys.argv[2])
def kept(batch):
    rows = []
    def bw(gm, ex):
        for n in gm.graph.nodes:
            v = n.meta.get("val")
            if n.op == "placeholder" and not n.name.startswith("tangents") and isinstance(v, torch.Tensor):
                rows.append((str(v.dtype), tuple(v.shape), v.numel() * v.element_size(), n.name))
        return make_boxed_func(gm)
    be = aot_autograd(fw_compiler=lambda gm, ex: make_boxed_func(gm), bw_compiler=bw,
                      partition_fn=min_cut_rematerialization_partition, decompositions=select_decomp_table())
    torch.manual_seed(0)
    net = create_danie(model, (patch, patch), 1, 9, deep_supervision=True)
    net.set_channels_last()
    x = torch.randn(batch, 1, patch, patch).to(memory_format=torch.channels_last)
    torch._dynamo.reset()
    c = torch.compile(net, backend=be, dynamic=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = c(x)
        loss = sum(o.float().sum() for o in out)
    loss.backward()
    return rows
r1, r2 = kept(1), kept(2)
def bydt(rows):
    d = collections.Counter()
    for dt, sh, b, nm in rows: d[dt] += b
    return d
d1, d2 = bydt(r1), bydt(r2)
print("per slice by dtype (MiB):", {k: round((d2[k] - d1[k]) / 2**20, 2) for k in d2})
# largest batch-dependent fp32 tensors at batch 2
big = sorted([r for r in r2 if r[0] == "torch.float32" and r[1] and r[1][0] == 2], key=lambda r: -r[2])[:25]
for r in big: print(r)
