"""bench/gpu_launches.py with Inductor's `realize_opcount_threshold` set (0: left at its default, 30 on a GPU).
Usage (repository root): `nnUNet_compile=f python docs/measurements/2026-12-07d-cpu/with_realize_opcount_threshold.py
40 --models L --patch 256 --batch 2 --upcast-per-use`; output of 0 and 40: realize_opcount_threshold_L_256x2.txt."""
import runpy
import sys
from pathlib import Path

import torch._inductor.config as inductor_config

threshold = int(sys.argv[1])
sys.argv = ["gpu_launches.py"] + sys.argv[2:]
if threshold:
    inductor_config.realize_opcount_threshold = threshold
runpy.run_path(str(Path(__file__).resolve().parents[3] / "bench" / "gpu_launches.py"), run_name="__main__")
