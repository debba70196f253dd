# One MBConv-like block (1x1 conv, BN, GELU, depthwise conv, BN, GELU, 1x1 conv, residual): bytes of its compiled forward and backward, stock BatchNorm or BatchNormGELU (bngelu.py, a closed-form autograd.Function prototype)
import sys, os
here = os.path.dirname(os.path.abspath(__file__)); sys.path[:0] = [here, os.path.join(here, "..", "..", "..", "bench")]
import torch
from collections import Counter
import importlib; FusedBNGELU = importlib.import_module(os.environ.get("BNMOD", "bngelu")).FusedBNGELU

class Stock(torch.nn.Module):
    def __init__(s, c=64, fused=False):
        super().__init__()
        s.conv1 = torch.nn.Conv2d(c, 4 * c, 1, bias=False)
        s.n1 = FusedBNGELU(4 * c, eps=1e-3) if fused else torch.nn.BatchNorm2d(4 * c, eps=1e-3)
        s.conv2 = torch.nn.Conv2d(4 * c, 4 * c, 3, padding=1, groups=4 * c, bias=False)
        s.n2 = FusedBNGELU(4 * c, eps=1e-3) if fused else torch.nn.BatchNorm2d(4 * c, eps=1e-3)
        s.conv3 = torch.nn.Conv2d(4 * c, c, 1)
        s.fused = fused
    def forward(s, x):
        act = (lambda t: t) if s.fused else (lambda t: torch.nn.functional.gelu(t, approximate="tanh"))
        y = act(s.n1(s.conv1(x)))
        y = act(s.n2(s.conv2(y)))
        return x + s.conv3(y)

def measure(fused, split):
    import gpu_launches
    from danie_nnunet.compiled import danie_compile_context
    torch.manual_seed(0)
    net = Stock(fused=fused).to(memory_format=torch.channels_last)
    x = torch.randn(4, 64, 64, 64).to(memory_format=torch.channels_last)
    torch._dynamo.reset()
    c = torch.compile(net)
    with gpu_launches.gpu_code_on_cpu() as launches, danie_compile_context(split):
        for it in range(2):
            launches.clear()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = c(x)
            fw = Counter(launches); launches.clear()
            y.float().square().mean().backward()
            bw = Counter(launches)
    out = []
    for name, cnt in (("fw", fw), ("bw", bw)):
        out.append(f"{name} {sum(cnt.values())} launches {sum(n * launches.gigabytes[k] for k, n in cnt.items())*1e3:.1f} MB")
        if os.environ.get("V"):
            for k, n in cnt.items():
                s = launches.sources[k]; print(f"    {n} x {launches.gigabytes[k]*1e3:7.2f} MB L{s.count('tl.load(')} S{s.count('tl.store(')} {k[0]}")
    print(f"fused={fused} split={split}: " + "; ".join(out))

if __name__ == "__main__":
    for fused in (False, True):
        measure(fused, os.environ.get("SPLIT", "1") == "1")
