"""The benchmark keeps working on CPU at tiny sizes (timings are printed, never asserted), and its per-row check
catches a fast path that computes another function."""
import os
from collections import Counter

import pytest
import torch

from bench_scripts import load_bench_script
from danie_nnunet import bench, profile_tables
from danie_nnunet.bench import VARIANTS, check_fast_paths, run_bench


def _rows(table):
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| nnU-Net") or line.startswith("| DANIE")]


def test_bench_prints_a_checked_row_per_model_mode_and_variant(tmp_path):
    out = tmp_path / "table.md"
    table = run_bench("cpu", configs=[(64, 1)], models=("U-Net", "S"), compile_modes=(False,), warmup=0, iters=1,
                      variants=("plain", "cl+rc"), out=str(out))
    rows = _rows(table)
    assert [r[0] for r in rows] == ["nnU-Net 2D PlainConvUNet", "DANIE-S", "DANIE-S"]
    assert rows[2][1].endswith("cl+rc") and out.read_text().strip() == table.strip()
    for row in rows:
        assert float(row[4]) > 0 and float(row[5]) > 0 and float(row[6]) > 0 and float(row[9]) > 0
        assert float(row[12]) > 0 and row[13] == "n/a"  # single tiles; CUDA graphs only on a GPU
    assert 0 < int(rows[0][11]) < int(rows[1][11])  # operators per forward: DANIE launches more than the U-Net
    assert rows[0][-1] == "reference" and all(r[-1].startswith("PASS") for r in rows[1:])


def test_a_train_only_row_leaves_the_inference_columns_unmeasured(capsys):
    from danie_nnunet.cli import main
    assert main(["bench", "--device", "cpu", "--configs", "64x1", "--models", "U-Net", "--modes", "eager",
                 "--warmup", "0", "--iters", "1", "--train-only"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert float(rows[0][4]) > 0 and rows[0][9:14] == ["n/a"] * 5  # train step timed; no inference column


def test_bench_check_fails_a_fast_path_that_changes_the_function(monkeypatch):
    build = bench.build_danie

    def broken(model, patch, in_chans, num_classes, variant="plain", **kwargs):
        net = build(model, patch, in_chans, num_classes, variant, **kwargs)
        if variant == "cl":  # a "fast path" that adds a constant to one head
            net.heads.seg_layers[0].register_forward_hook(lambda m, i, o: o + 1.0)
        return net

    monkeypatch.setattr(bench, "build_danie", broken)
    rows = _rows(run_bench("cpu", configs=[(64, 1)], models=("S",), compile_modes=(False,), warmup=0, iters=1,
                           variants=("plain", "cl")))
    assert rows[0][-1].startswith("PASS") and rows[1][-1].startswith("FAIL")
    with pytest.raises(AssertionError, match="MISMATCH"):
        check_fast_paths("cpu", model="S", patch=64, batch=1, compile_check=False, variants=("cl",))


def test_bench_skips_rows_past_its_time_budget():
    rows = run_bench("cpu", configs=[(64, 1)], models=("U-Net", "S"), compile_modes=(False,), warmup=0, iters=1,
                     time_budget=0.0).splitlines()
    assert sum("skipped: past the 0 s budget" in r for r in rows) == 2


def test_fast_paths_match_the_plain_formulation_on_cpu():
    lines = check_fast_paths("cpu", model="S", patch=64, batch=2, compile_check=False)
    # every variant (on CPU, float64 without autocast, cl+wcopy runs as cl: the copies need an autocast)
    assert lines[-1].endswith("all fast paths match") and sum(" PASS " in line for line in lines) == len(VARIANTS)


@pytest.mark.parametrize("compiled", [False, True])
def test_a_budgeted_variant_recomputes_as_the_trainer_would(monkeypatch, compiled):
    # a budget between the compiled and the eager estimate: only the uncompiled network needs recomputation
    from danie_nnunet.memory import estimate_training_memory
    eager, fast = (estimate_training_memory("S", (64, 64), 1, 3, compiled=c).total_gib(4) for c in (False, True))
    monkeypatch.setitem(bench.VARIANTS, "cl+fit", dict(channels_last=True, recompute=(eager + fast) / 2))
    net = bench.build_danie("S", 64, 1, 3, "cl+fit", batch=4, compiled=compiled)
    recomputed = [m for m in net.modules() if getattr(m, "_danie_recompute", False)]
    assert bool(recomputed) is not compiled and net.channels_last


def test_profile_names_the_compiled_step_its_wall_time_and_its_operators(capsys):
    # backend "eager": Dynamo's graph run eagerly, no AOTAutograd or code generation, which a CPU test cannot afford
    from danie_nnunet.cli import main
    assert main(["bench", "--device", "cpu", "--configs", "32x2", "--models", "S", "--variants", "cl", "--profile",
                 "--modes", "compile", "--compile-backend", "eager", "--warmup", "0", "--iters", "1"]) == 0
    head, *table = capsys.readouterr().out.splitlines()
    assert head.startswith("DANIE-S cl, 2x1x32x32, one compile (eager) training step: ") and " ms wall " in head
    assert float(head.split("step: ")[1].split(" ms")[0]) > 0
    assert any("aten::convolution" in line for line in table)
    # the host table, then the profiler's own: on CPU the library operators are the convolutions' compute
    host = table[table.index("| host family | host ms (profiled) | share | calls |"):]
    host = host[:host.index("")]
    families = [line.split(" | ")[0].lstrip("| ") for line in host[2:]]
    assert {"library operators (host side)", "compiled-graph runtime (Python)", "autograd engine"} <= set(families)
    assert sum(float(line.split(" | ")[2].rstrip(" %")) for line in host[2:]) == pytest.approx(100, abs=len(host))
    # then the library operators by input shape, most time first
    shaped = table[table.index("| library operator | input shapes | host ms (profiled) | calls |"):]
    shaped = [[c.strip() for c in line.strip("|").split("|")] for line in shaped[2:shaped.index("")]]
    assert 0 < len(shaped) <= 30 and all(profile_tables.LIBRARY_OPERATOR.search(op) for op, *_ in shaped)
    assert [float(ms) for _, _, ms, _ in shaped] == sorted((float(ms) for _, _, ms, _ in shaped), reverse=True)
    assert all(shapes and int(calls) > 0 for _, shapes, _, calls in shaped)
    assert any("conv" in op for op, *_ in shaped) and any(op in ("aten::mm", "aten::addmm") for op, *_ in shaped)
    # a 3 x 3 convolution's input or output gradient (batch 2) and its weight, as the network has them
    def conv3x3(op, shapes):
        parsed = [[int(n) for n in shape.split("x")] for shape in shapes.split()]
        first, weight = parsed[0], parsed[-1]
        return "conv" in op and len(parsed) > 1 and first[0] == 2 and weight[2:] == [3, 3] and first[1] in weight[:2]
    assert any(conv3x3(op, shapes) for op, shapes, _, _ in shaped)


@pytest.mark.parametrize("modes, compiled", [("eager,compile", False), ("eager", False), ("compile", True)])
def test_profile_compiles_only_when_asked_for_compile_alone(monkeypatch, modes, compiled):
    # the default modes (both) profile the eager step, as gpu_checks.sh's bench mode expects
    from danie_nnunet.cli import main
    seen = {}

    def record(model, variant, patch, batch, in_chans, num_classes, device, amp_dtype, compiled, *rest):
        seen["compiled"] = compiled
        return ""

    monkeypatch.setattr(bench, "profile_row", record)
    assert main(["bench", "--device", "cpu", "--models", "S", "--profile", "--modes", modes]) == 0
    assert seen["compiled"] is compiled


@pytest.mark.parametrize("how, kwargs", [("inductor", {"backend": "inductor"}), ("aot_eager", {"backend": "aot_eager"}),
                                         ("reduce-overhead", {"mode": "reduce-overhead"}),
                                         ("combo-kernels", {"options": {"combo_kernels": True}})])
def test_compile_backend_takes_a_backend_or_an_inductor_mode(monkeypatch, how, kwargs):
    import torch
    seen = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: seen.append(kw) or net)
    bench._compile(torch.nn.Linear(1, 1), how)
    assert seen == [kwargs]
    assert bench._mode_label(True, how) == ("compile" if how == "inductor" else f"compile ({how})")


def test_a_row_in_a_cuda_graph_setting_says_whether_its_graphs_were_replayed():
    import torch
    torch._dynamo.reset()
    before = bench.cuda_graph_skips()
    net = bench._compile(torch.nn.Linear(3, 2), "reduce-overhead")
    net(torch.randn(4, 3)).sum().backward()  # a CPU has no CUDA graphs: Inductor counts the graph as skipped
    assert bench._cuda_graphs_note("reduce-overhead", before).startswith(", CUDA graphs skipped for ")
    now = bench.cuda_graph_skips()
    assert bench._cuda_graphs_note("reduce-overhead", now) == ", CUDA graphs replayed"
    assert bench._cuda_graphs_note("inductor", before) == bench._cuda_graphs_note("combo-kernels", before) == ""


def test_a_slow_rate_keeps_its_digits():
    # a busy 2-core CI machine can take 20 s for one float64 step: the table must not print that as 0.0
    cells = bench.BenchRow("DANIE-S", "eager", 64, 1, 20000.0, 0.05, 1e-5, -1.0, 0.04, 1e-5, 800, 0.049, -1.0,
                           "PASS").cells(None)
    assert (cells[5], cells[9], cells[12], cells[13]) == ("0.05", "0.04", "0.049", "n/a")
    assert bench.BenchRow("U-Net", "eager", 512, 12, 41.9, 286.6, 103.0, 5.04, 706.4, 84.4, 105, 152.6,
                          -1.0).cells(989.0)[5] == "286.6"


def test_channel_attention_bench_times_both_forms_of_es_at_every_level(tmp_path, capsys):
    # bench/channel_attention.py: ES before and since its split over positions, checked against each other
    script = load_bench_script("channel_attention")
    out = tmp_path / "es.md"
    try:
        script.main(["--models", "S", "--size", "128", "--batch", "1", "--iters", "1", "--device", "cpu",
                     "--out", str(out)])
    finally:
        torch.set_flush_denormal(False)
    rows = _rows(out.read_text())
    assert [r[1] for r in rows] == ["1", "2", "3", "4"]
    assert [r[3] for r in rows] == ["4", "1", "1", "1"]  # 32 x 32 positions, 64 channels: 4 chunks of 256
    for r in rows:
        assert float(r[4]) > 0 and float(r[5]) > 0
        assert float(r[7]) < 1e-5 and float(r[8]) < 1e-4  # fp32 rounding only
    assert out.read_text() in capsys.readouterr().out


def test_adamw_bench_times_the_three_implementations_and_compares_their_weights(tmp_path, capsys):
    # bench/adamw_step.py: DANIETrainer's AdamW step, default / foreach / fused, on real gradients
    out = tmp_path / "adamw.md"
    load_bench_script("adamw_step").main(["--models", "S", "--size", "64", "--batch", "2", "--iters", "1",
                                      "--device", "cpu", "--out", str(out)])
    rows = _rows(out.read_text())
    assert [r[3] for r in rows] == ["default", "foreach", "fused"]
    assert rows[0][1] == "47.2 M" and all(float(r[4]) > 0 for r in rows)
    assert float(rows[0][6]) == 0 and all(float(r[6]) < 1e-6 for r in rows)  # the same update, rounded apart
    assert out.read_text() in capsys.readouterr().out


def test_loader_targets_bench_counts_the_targets_a_batch_carries(tmp_path):
    # bench/loader_targets.py: nnU-Net's transforms and collation with five full-resolution targets, then one
    out = tmp_path / "loader.md"
    load_bench_script("loader_targets").main(["--size", "128", "--batch", "8", "--batches", "1", "--out", str(out)])
    five, one = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
                 if line.startswith(("| five", "| one"))]
    assert five[0] == "five (before)" and one[0] == "one (now)"
    assert float(one[3]) == 128 * 128 * 8 * 2 / 2 ** 20 and float(five[3]) == 5 * float(one[3])  # int16 targets
    assert float(five[1]) > 0 and float(one[1]) > 0


class _TinyAttentionNet(torch.nn.Module):
    """A convolution, a BatchNorm and a biased attention: what DANIE's compiled step is made of, in seconds."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(8)
        self.qkv = torch.nn.Linear(8, 24)
        self.bias = torch.nn.Parameter(torch.zeros(2, 16, 16))

    def forward(self, x):
        x = torch.nn.functional.gelu(self.norm(self.conv(x)))
        q, k, v = self.qkv(x.flatten(2).transpose(1, 2)).view(x.shape[0], 16, 2, 12).transpose(1, 2).chunk(3, -1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.bias).sum()


def test_gpu_launches_counts_the_triton_kernels_of_a_compiled_step_on_the_cpu(tmp_path):
    # bench/gpu_launches.py: Inductor's Triton (GPU) code generated on the CPU, each launch counted and not run
    from danie_nnunet.weight_cast import LowPrecisionWeights
    script = load_bench_script("gpu_launches")
    import torch._inductor.runtime.hints as hints
    sdpa, interpret = torch.nn.functional.scaled_dot_product_attention, os.environ.get("TRITON_INTERPRET")
    create = hints.DeviceProperties.__dict__["create"]
    torch.manual_seed(0)
    net, x = _TinyAttentionNet(), torch.randn(2, 1, 4, 4)
    compiled = torch.compile(net)
    counts, moved = {}, {}
    torch._dynamo.utils.counters.clear()
    for copies in (False, True):
        weights = LowPrecisionWeights.record(net, lambda: net(x), "cpu") if copies else None
        with script.gpu_code_on_cpu() as launches:
            for _ in range(2):  # the first compiles; the second is counted
                launches.clear()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = compiled(x) if weights is None else weights(compiled, x)
                loss.backward()
                if weights is not None:
                    weights.gradients_to_parameters()
        counts[copies] = Counter(launches)
        # each kernel's bytes as Inductor estimates them (its benchmark metadata), per launch
        assert set(launches.gigabytes) >= set(launches) and all(launches.gigabytes[k] > 0 for k in launches)
        moved[copies] = sum(n * launches.gigabytes[k] for k, n in launches.items())
        # and its Triton source, as the interpreter loaded it
        assert all(f"def {k[0]}(" in launches.sources[k] for k in launches)
        kernel_gb = Counter({k[0]: n * launches.gigabytes[k] for k, n in launches.items()})
        written = script.write_sources(str(tmp_path), f"net {copies}", kernel_gb,
                                       {k[0]: launches.sources[k] for k in launches}, 2)
        top = kernel_gb.most_common(1)[0][0]
        assert len(written) == 2 and written[0].endswith(f"net_{copies}/01_{top}.py")
        assert f"def {top}(" in open(written[0]).read()
        assert net.conv.weight.grad is not None
        net.zero_grad(set_to_none=True)
    assert not torch._dynamo.utils.counters["graph_break"]  # its attention stand-in traces into the one graph
    assert sum(counts[False].values()) > sum(counts[True].values()) > 0  # the weight casts' kernels are gone
    assert moved[False] > moved[True] > 0  # and what they read and wrote
    families = {profile_tables.kernel_family(name) for c in counts.values() for name, _ in c}
    assert not any("softmax" in f for f in families)  # attention stays one opaque call, as CUDA's kernel
    assert any("_to_copy" in f for f in families) and any("batch_norm" in f for f in families)
    assert profile_tables.kernel_family("triton_poi_fused__to_copy_3") == "poi_fused__to_copy"
    # everything it patched is back
    assert torch.nn.functional.scaled_dot_product_attention is sdpa
    assert os.environ.get("TRITON_INTERPRET") == interpret
    assert hints.DeviceProperties.__dict__["create"] is create
    assert torch._inductor.config.cpu_backend == "cpp" and not torch._inductor.config.benchmark_kernel
