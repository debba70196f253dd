"""The benchmark keeps working on CPU at tiny sizes (timings are printed, never asserted)."""
from danie_nnunet.bench import check_fast_paths, run_bench


def test_bench_prints_a_row_per_model_and_mode():
    table = run_bench("cpu", configs=[(64, 1)], models=("U-Net", "S"), compile_modes=(False,), warmup=0, iters=1)
    rows = [line for line in table.splitlines() if line.startswith("| nnU-Net") or line.startswith("| DANIE")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[4]) > 0 and float(cells[5]) > 0 and float(cells[6]) > 0 and float(cells[9]) > 0


def test_fast_paths_match_the_plain_formulation_on_cpu():
    lines = check_fast_paths("cpu", variant="S", patch=64, batch=2, compile_check=False)
    assert lines[-1].endswith("all fast paths match") and sum(line.startswith("PASS") for line in lines) == 3
