#!/usr/bin/env bash
# Issue 4's GPU checks, one device call per mode; results are written under $OUT (at most 8 files come back).
# Every DANIE row of the tables is first checked against the plain network in fp32 (same weights, input and loss:
# relative L2 error of outputs and gradients at most 2x the plain network's own bf16 error + 1e-3), then timed.
# Timings of the first run (H200, 2026-11-26): a DANIE row takes about 20 s, compiling DANIE-L over 3 minutes.
#
# Here, before the calls (builds .whl/ with nnU-Net's packages and this package's wheel):
#   bash ../shared/device/prepare-wheels.sh && python3 -m pip wheel -q --no-deps -w .whl .
# A session's 15 minutes of device time (machine start included) hold `first`, then `e2e` if time is left:
# first (about 9 min): the eager channels-last rows with single-tile and CUDA graph columns, then the compiled
#   DANIE-L (checked first) and the compiled U-Net, all at 512x12: every ratio of issue 4's targets, same card
#   run(command="bash bench/gpu_checks.sh first", carry=[".whl"], timeout_s=590)
# bench (about 6 min): the eager table with every fast variant at 512x12 and 256x24, a kernel profile
#   run(command="bash bench/gpu_checks.sh bench", carry=[".whl"], timeout_s=420)
# compile (about 7 min): graph breaks, then the compiled table (DANIE-L first, with its check)
#   run(command="bash bench/gpu_checks.sh compile", carry=[".whl"], timeout_s=540)
# e2e (about 5 min): nnUNetv2_train epoch time and nnUNetv2_predict seconds, DANIE-L vs nnU-Net, DANIE-L's predict
#   also with CUDA graphs (DANIE_cuda_graphs=t) and its segmentation compared with the eager one
#   run(command="bash bench/gpu_checks.sh e2e", carry=[".whl"], timeout_s=420)
# SMALL=1 shrinks every size so the script itself can be tried on a CPU.
set -uo pipefail
mode=${1:-bench}
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/danie_gpu_out}
mkdir -p "$OUT"
if [ -f .whl/install.sh ] && [ -z "${SMALL:-}" ]; then  # SMALL=1 runs in the local environment
  bash .whl/install.sh > "$OUT/log.txt" 2>&1 || { cat "$OUT/log.txt"; exit 1; }
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
export PYTHONUNBUFFERED=1
PY=${PY:-python3 -P}  # -P: the installed package, not the source folder (which lacks danie_nnunet.trainers)
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c \
  "import torch, timm, nnunetv2; print('torch', torch.__version__, 'timm', timm.__version__)") > "$OUT/device.txt" 2>&1
# one log for all steps (at most 8 files come back from $OUT), warnings kept: they name torch.compile's graph breaks
step() { local name=$1 limit=$2; shift 2; echo "== $name (limit ${limit}s, at $(date +%T))" | tee -a "$OUT/log.txt"
         timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt" | grep --line-buffered -v "Warning\|warnings.warn"; }

if [ -n "${SMALL:-}" ]; then
  big=64x2; small=32x4; device=cpu; it="--warmup 0 --iters 1"
else
  big=512x12; small=256x24; device=auto; it="--warmup 3 --iters 10"
fi
bench="$PY -m danie_nnunet.cli bench --device $device $it"
if [ "$mode" = first ]; then
  step bench_eager 130 $bench --configs $big --models U-Net,S,L --modes eager --variants cl --out "$OUT/bench_eager.md"
  step bench_compile 400 $bench --configs $big --models L,U-Net --modes compile --variants cl \
       --out "$OUT/bench_compile.md"
elif [ "$mode" = bench ]; then
  step bench_eager 250 $bench --configs $big --models U-Net,S,L --modes eager --variants plain,cl,cl+rc \
       --out "$OUT/bench_eager.md"
  step bench_eager_small 100 $bench --configs $small --models U-Net,S,L --modes eager --variants cl \
       --out "$OUT/bench_eager_small.md"
  step profile 45 $bench --configs $big --models L --variants cl --profile --out "$OUT/profile_L.txt"
elif [ "$mode" = compile ]; then
  step explain 90 $bench --configs $big --models L --variants cl --explain --out "$OUT/explain_L.txt"
  # the L row is checked against the plain network first (PASS/FAIL): the first compiled run since the backward
  # is traced outside autocast (danie_nnunet/compiled.py); on the H200 before that its gradients were NaN
  step bench_compile 400 $bench --configs $big --models L,U-Net --modes compile --variants cl \
       --out "$OUT/bench_compile.md"
elif [ "$mode" = e2e ]; then
  work=/tmp/danie_e2e; rm -rf $work
  export nnUNet_raw=$work/raw nnUNet_preprocessed=$work/pre nnUNet_results=$work/res
  export nnUNet_extTrainer="$($PY -m danie_nnunet.cli ext-path):$here/nnunet_ext"
  if [ -n "${SMALL:-}" ]; then shape="(6, 64, 64)"; test_shape="(8, 64, 64)"; dev=cpu; export DANIE_BENCH_ITERATIONS=2; else shape="(40, 512, 512)"; test_shape="(100, 512, 512)"; dev=cuda; fi
  $PY - <<PYEOF
import os, numpy as np
from danie_nnunet.synthetic import write_dataset, make_case, _write
p = write_dataset(os.environ["nnUNet_raw"], 992, "Bench512", num_train=10, num_test=0, shape=$shape,
                  spacing=(2.5, 0.76, 0.76))
image, label = make_case(np.random.default_rng(1), $test_shape)
_write(image, (2.5, 0.76, 0.76), os.path.join(p["imagesTs"], "volume_0000.nii.gz"))
PYEOF
  step plan 50 nnUNetv2_plan_and_preprocess -d 992 -c 2d -np 8 -npfp 8
  for tr in DANIETrainer_bench nnUNetTrainer_bench; do  # DANIE first: its numbers matter most if time runs out
    [ $tr = DANIETrainer_bench ] && limit=160 || limit=70
    step "train_$tr" $limit nnUNetv2_train 992 2d 0 -tr $tr -device $dev
    run=$nnUNet_results/Dataset992_Bench512/${tr}__nnUNetPlans__2d
    # both epochs; the second is the timed one
    echo "$tr: $(grep -ho "'batch_size': [0-9]*\|'patch_size': \[[0-9, ]*\]\|Epoch time: [0-9.]* s" \
      $run/fold_0/training_log_*.txt | paste -sd ';')" \
      >> "$OUT/e2e_times.txt"
    start=$EPOCHREALTIME
    timeout 45 nnUNetv2_predict -i $nnUNet_raw/Dataset992_Bench512/imagesTs -o $work/pred_$tr -d 992 -c 2d -tr $tr \
      -f 0 -device $dev > "$work/predict_$tr.log" 2>&1 || tail -20 "$work/predict_$tr.log" | tee -a "$OUT/log.txt"
    echo "$tr: nnUNetv2_predict of one volume $test_shape with mirroring: $(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $start}") s" \
      >> "$OUT/e2e_times.txt"
    if [ $tr = DANIETrainer_bench ]; then  # again with CUDA graphs (danie_nnunet/cuda_graphs.py), same output?
      start=$EPOCHREALTIME
      DANIE_cuda_graphs=t timeout 45 nnUNetv2_predict -i $nnUNet_raw/Dataset992_Bench512/imagesTs -o $work/pred_graphs \
        -d 992 -c 2d -tr $tr -f 0 -device $dev > "$work/predict_graphs.log" 2>&1 \
        || tail -20 "$work/predict_graphs.log" | tee -a "$OUT/log.txt"
      echo "$tr: the same with DANIE_cuda_graphs=t: $(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $start}") s" \
        >> "$OUT/e2e_times.txt"
      $PY -c "
import SimpleITK as sitk, numpy as np
a, b = (sitk.GetArrayFromImage(sitk.ReadImage('$work/' + d + '/volume.nii.gz')) for d in ('pred_$tr', 'pred_graphs'))
print('$tr: segmentation with CUDA graphs equal to eager in %.4f %% of voxels' % (100 * np.mean(a == b)))
" >> "$OUT/e2e_times.txt" 2>&1
    fi
  done
  cat "$OUT/e2e_times.txt"
fi
