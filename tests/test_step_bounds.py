"""bench/step_bounds.py: the floor and launch bound of a compiled step, from a card's profile and the CPU's count."""
import pytest

from bench_scripts import load_bench_script

step_bounds = load_bench_script("step_bounds")

RULE = "-" * 60 + "  " + "  ".join(["-" * 12] * 3)


def _profile(rows, title="DANIE-S cl, 12x1x512x512, one compile training step: 100.0 ms wall", between=""):
    head = f"{'Name':>60}  {'Self CUDA':>12}  {'Self CUDA %':>12}  {'# of Calls':>12}"
    body = [f"{name:>60}  {time:>12}  {'1.00%':>12}  {calls:>12}" for name, time, calls in rows]
    return "\n".join([title, between, RULE, head, RULE, *body, RULE, "Self CUDA time total: 9.9ms"])


def test_a_profile_table_is_read_by_its_columns_and_units():
    # as `bench --profile` writes it: the title, its Markdown tables, then torch's
    profile = step_bounds.parse_profile(_profile([
        ("aten::convolution_backward", "1.500s", 132),
        ("void at::native::elementwise_kernel<128, 4, at::nat...", "12.243ms", 206),
        ("aten::mm", "980.150us", 272)], between="| family | device ms |\n|---|---|\n| attention | 1.0 |"))
    assert profile.compiled
    assert profile.rows["aten::convolution_backward"] == (1.5e6, 132)
    assert profile.rows["void at::native::elementwise_kernel<128, 4, at::nat..."] == (12243.0, 206)
    assert profile.smallest_us == pytest.approx(980.15)


def test_library_time_counts_library_operators_and_bounds_the_unlisted_ones():
    profile = step_bounds.parse_profile(_profile([
        ("aten::convolution_backward", "10.000ms", 132), ("aten::copy_", "5.000ms", 73),
        ("aten::cudnn_convolution", "4.000ms", 132), ("aten::mm", "3.000ms", 272), ("aten::bmm", "2.000ms", 44),
        ("aten::_fused_adamw_", "1.000ms", 1)]))
    low, high, missing = step_bounds.library_ms(profile)
    assert low == pytest.approx(19.0)  # the copies and the optimiser are not library calls
    assert missing == ["attention backward", "attention forward", "addmm"]
    assert high == pytest.approx(19.0 + 3 * 1.0)  # each at most the smallest listed row
    assert step_bounds.optimiser_and_copies_ms(profile) == pytest.approx((1.0, 5.0))


def test_profiles_that_cannot_bound_a_step_are_refused_saying_why():
    unsorted = _profile([("aten::mm", "1.000ms", 1), ("aten::bmm", "2.000ms", 1)])
    with pytest.raises(ValueError, match="not sorted by self device time"):
        step_bounds.parse_profile(unsorted)
    with pytest.raises(ValueError, match="no torch.profiler table"):
        step_bounds.parse_profile("DANIE-S, one compile training step\n| a | markdown |\n|---|---|")
    cpu_only = _profile([("aten::mm", "1.000ms", 1)]).replace("Self CUDA", "Self CPU ")
    with pytest.raises(ValueError, match="no 'Self CUDA' column"):
        step_bounds.parse_profile(cpu_only)
    eager = step_bounds.parse_profile(_profile([("aten::mm", "1.000ms", 1)], title="DANIE-L, one eager training step"))
    with pytest.raises(ValueError, match="autocast's casts"):
        step_bounds.optimiser_and_copies_ms(eager)


def test_the_bytes_table_row_is_found_by_its_model_name():
    text = ("torch ...\n\n| model | Triton launches | library calls (eager count) | Triton GB moved (estimate) |\n"
            "|---|---|---|---|\n| DANIE-S, bf16 | 2585 | 688 | 80.2 |\n| DANIE-S, bf16, larger fusions | 1870 | 688 | 49.8 |")
    assert step_bounds.parse_bytes(text, "larger fusions") == (1870, 688, 49.8)
    assert step_bounds.parse_bytes(text, "DANIE-S") == (2585, 688, 80.2)
    with pytest.raises(ValueError, match="no row naming 'DANIE-L'"):
        step_bounds.parse_bytes(text, "DANIE-L")


def test_the_cases_of_record_give_the_estimates_the_docs_quote():
    s_default, s_flags, l_default, l_flags = (step_bounds.bounds(case) for case in step_bounds.CASES_OF_RECORD)
    # DANIE-S (docs/performance.md, "What 1.0x needs by the estimates"): 27.8 ms of library calls and 1.6 ms of
    # optimiser and copies in the H100's compiled profile; floors 53.3 and 44.3 ms, launch bounds 112.0 and 87.7
    assert s_default["library"] == pytest.approx((27.814, 27.814), abs=1e-3) and not s_default["missing"]
    assert s_default["other"] == pytest.approx(1.617, abs=1e-3)
    assert s_default["floor"][0] == pytest.approx(53.4, abs=0.05) and s_flags["floor"][0] == pytest.approx(44.3, abs=0.05)
    assert s_default["launch_bound"] == pytest.approx(112.1, abs=0.1)
    assert s_flags["launch_bound"] == pytest.approx(87.8, abs=0.1)
    # DANIE-L from the H200's eager profile: attention and addmm are below its 25 rows, so the library time is a range
    assert l_flags["missing"] == ["attention backward", "attention forward", "addmm"]
    assert l_flags["library"][0] == pytest.approx(30.42, abs=0.01)
    assert l_flags["library"][1] == pytest.approx(30.42 + 3 * 2.932, abs=0.01)
    assert l_flags["floor_x"][0] < 0.7 < l_flags["floor_x"][1]
    # the default compile's launch bound is what the H100 measured for the compiled DANIE-L (108.6 ms)
    assert l_default["launch_bound"] == pytest.approx(108.6, rel=0.05)


def test_the_command_prints_the_table_or_says_what_is_wrong(tmp_path, capsys):
    assert step_bounds.main([]) == 0
    out = capsys.readouterr().out
    assert "| DANIE-L, the three flags (H200 eager profile) |" in out and "floor vs U-Net" in out
    missing = tmp_path / "missing.txt"
    assert step_bounds.main(["--profile", str(missing), "--bytes", str(missing)]) == 1
    assert "missing.txt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        step_bounds.main(["--profile", str(missing)])


def test_a_new_profile_bounds_its_step_with_its_own_host_time_per_launch(tmp_path, capsys):
    # `bench --profile` now writes the step's wall time and device operations in its title: this card's host time
    # per launch, for the launch bound of other settings of the same step
    profile = tmp_path / "profile_L_compiled.txt"
    profile.write_text(_profile([
        ("aten::convolution_backward", "20.000ms", 121), ("aten::cudnn_convolution", "6.000ms", 121),
        ("aten::mm", "5.000ms", 272), ("aten::bmm", "3.000ms", 44), ("aten::addmm", "2.500ms", 88),
        ("aten::_efficient_attention_backward", "2.400ms", 22), ("aten::_efficient_attention_forward", "1.500ms", 22),
        ("aten::copy_", "1.000ms", 73), ("aten::_fused_adamw_", "0.900ms", 1)],
        title="DANIE-L cl, 12x1x512x512, one compile training step: 100.0 ms wall (median of 10, unprofiled), "
              "device busy 60.0 ms of it (60 %) in 2000 kernels and copies"))
    counts = tmp_path / "bytes.md"
    counts.write_text("| model | Triton launches | library calls (eager count) | Triton GB moved |\n|---|---|---|---|\n"
                      "| DANIE-L, bf16 | 1290 | 690 | 67.0 |\n| DANIE-L, larger fusions | 1000 | 690 | 33.5 |")
    result = step_bounds.bounds(step_bounds.Case("L", str(profile), str(counts), "larger fusions"))
    assert result["library"] == pytest.approx((40.4, 40.4)) and not result["missing"]
    assert result["other"] == pytest.approx(1.9)
    assert result["floor"][0] == pytest.approx(40.4 + 1.9 + 10.0)
    assert result["us_per_launch"] == pytest.approx(50.0)
    assert result["launch_bound"] == pytest.approx((1000 + 690 + 20) * 0.05)
    assert step_bounds.main(["--profile", str(profile), "--bytes", str(counts), "--row", "bf16",
                             "--bytes", str(counts), "--row", "larger fusions", "--unet-ms", "50"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| DANIE-L")]
    assert len(lines) == 2 and "the bytes of 'bf16'" in lines[0] and "| 100.0 | 0.50x |" in lines[0]
