"""The demo: synthetic CT -> stock nnU-Net plan/preprocess -> DANIE training -> prediction -> metrics + overlays.

Everything runs through nnU-Net's own command-line tools, exactly as a user would type them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

from .synthetic import LABELS, write_dataset
from .visualize import overlay_png

DATASET_ID = 990
CPU_TRAINER = "DANIETrainer_S_4epochs_25it"
GPU_TRAINER = "DANIETrainer_S_50epochs"


def ext_trainer_path() -> str:
    """The folder to put on nnUNet_extTrainer (found without importing nnU-Net)."""
    import importlib.util
    spec = importlib.util.find_spec("danie_nnunet.trainers")
    return os.path.join(list(spec.submodule_search_locations)[0], "nnunet_ext")


def nnunet_env(root: str, extra_ext: Optional[str] = None) -> Dict[str, str]:
    """Environment for nnU-Net commands with its three folders under `root` and the DANIE trainers findable."""
    env = dict(os.environ)
    for var, sub in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                     ("nnUNet_results", "nnUNet_results")):
        env[var] = os.path.join(root, sub)
        os.makedirs(env[var], exist_ok=True)
    ext = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    for p in (ext_trainer_path(), extra_ext):
        if p and p not in ext:
            ext.append(p)
    env["nnUNet_extTrainer"] = os.pathsep.join(ext)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def console_script(name: str) -> str:
    """A console script of this environment, also when its bin folder is not on PATH (an unactivated venv)."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    return local if os.path.exists(local) else (shutil.which(name) or name)


def run_command(args: List[str], env: Dict[str, str], log_file: Optional[str] = None) -> float:
    """Run a console script; raise with the tail of its output when it fails. Returns seconds taken."""
    cmd = [console_script(args[0])] + [str(a) for a in args[1:]]
    print("$ " + " ".join(args), flush=True)
    start = time.time()
    with open(log_file, "a") if log_file else open(os.devnull, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: List[str] = []
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line])[-40:]
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"command failed with exit code {proc.returncode}: {' '.join(args)}\n"
                           + "".join(tail))
    return time.time() - start


def metrics_table(summary_file: str, labels: Dict[str, int]) -> str:
    """Markdown table of nnU-Net's per-class mean Dice and IoU from an evaluation summary.json."""
    with open(summary_file) as f:
        summary = json.load(f)
    names = {v: k for k, v in labels.items()}
    rows = ["| class | Dice | IoU |", "|---|---|---|"]
    for key, m in sorted(summary["mean"].items(), key=lambda kv: int(kv[0])):
        rows.append(f"| {names.get(int(key), key)} | {m['Dice']:.3f} | {m['IoU']:.3f} |")
    fg = summary["foreground_mean"]
    rows.append(f"| **mean (foreground)** | **{fg['Dice']:.3f}** | **{fg['IoU']:.3f}** |")
    return "\n".join(rows)


def run_demo(out_dir: str = "demo_out", device: str = "auto", trainer: Optional[str] = None,
             num_train: int = 8) -> Dict[str, str]:
    """Run the whole demo under `out_dir`; returns the paths of the metrics table and overlays."""
    import torch
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    trainer = trainer or (GPU_TRAINER if device == "cuda" else CPU_TRAINER)
    out_dir = os.path.abspath(out_dir)
    env = nnunet_env(out_dir)
    if device == "cpu":
        env.setdefault("nnUNet_def_n_proc", "2")
    # on a CPU, training only (nnU-Net's planner takes this as its thread count): the augmentation in the training
    # process, where the CPU demo trainer's seed reaches it, so each run gives the same result (background workers
    # draw their own random numbers, in their own order)
    train_env = dict(env, nnUNet_n_proc_DA=env.get("nnUNet_n_proc_DA", "0")) if device == "cpu" else env
    log = os.path.join(out_dir, "demo_log.txt")
    paths = write_dataset(env["nnUNet_raw"], DATASET_ID, num_train=num_train)
    print(f"[demo] synthetic dataset: {paths['dataset']}")
    did = str(DATASET_ID)
    times = {"plan_and_preprocess": run_command(["nnUNetv2_plan_and_preprocess", "-d", did, "-c", "2d",
                                                 "-np", "2", "-npfp", "2"], env, log)}
    times["train"] = run_command(["nnUNetv2_train", did, "2d", "0", "-tr", trainer, "-device", device], train_env,
                                 log)
    pred = os.path.join(out_dir, "predictions")
    times["predict"] = run_command(["nnUNetv2_predict", "-i", paths["imagesTs"], "-o", pred, "-d", did, "-c", "2d",
                                    "-tr", trainer, "-f", "0", "-device", device, "-npp", "1", "-nps", "1"],
                                   env, log)
    summary = os.path.join(out_dir, "summary.json")
    fg = [str(v) for v in LABELS.values() if v > 0]
    times["evaluate"] = run_command(["nnUNetv2_evaluate_simple", paths["labelsTs"], pred, "-l", *fg, "-o", summary,
                                     "-np", "1"], env, log)
    table = metrics_table(summary, LABELS)
    overlays = []
    for label_file in sorted(os.listdir(paths["labelsTs"])):
        case = label_file[: -len(".nii.gz")]
        png = os.path.join(out_dir, f"overlay_{case}.png")
        overlay_png(os.path.join(paths["imagesTs"], f"{case}_0000.nii.gz"),
                    [os.path.join(paths["labelsTs"], label_file), os.path.join(pred, label_file)], png)
        overlays.append(png)
    report = os.path.join(out_dir, "metrics.md")
    with open(report, "w") as f:
        f.write(f"# DANIE demo ({trainer}, device {device})\n\nTest cases: {len(overlays)} synthetic CT volumes, "
                f"nnU-Net's evaluation (Dice/IoU per class, mean over cases).\n\n{table}\n\nSeconds: "
                + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + "\n\nOverlays (image | truth | DANIE): "
                + ", ".join(os.path.basename(p) for p in overlays) + "\n")
    print(f"\n{table}\n\n[demo] metrics: {report}\n[demo] overlays: {', '.join(overlays)}\n[demo] log: {log}")
    return {"metrics": report, "summary": summary, "overlays": overlays, "log": log}
