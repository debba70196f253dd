#!/usr/bin/env bash
# Issue 4's GPU checks in one device call each; results are written under $OUT (at most 8 files come back).
#
# Here, before the call (builds .whl/ with nnU-Net's packages and this package's wheel):
#   bash ../shared/device/prepare-wheels.sh && python3 -m pip wheel -q --no-deps -w .whl .
# Call 1 (about 8 minutes): fast-path correctness, then the benchmark table (eager and compiled):
#   run(command="bash bench/gpu_checks.sh bench", carry=[".whl"], timeout_s=600)
# Call 2 (about 6 minutes): nnUNetv2_train epoch time and nnUNetv2_predict seconds, DANIE-L vs nnU-Net:
#   run(command="bash bench/gpu_checks.sh e2e", carry=[".whl"], timeout_s=600)
# SMALL=1 shrinks every size so the script itself can be tried on a CPU.
set -uo pipefail
mode=${1:-bench}
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/danie_gpu_out}
mkdir -p "$OUT"
if [ -f .whl/install.sh ]; then
  bash .whl/install.sh > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c \
  "import torch, timm, nnunetv2; print('torch', torch.__version__, 'timm', timm.__version__)") > "$OUT/device.txt" 2>&1
step() { local name=$1 limit=$2; shift 2; echo "== $name (limit ${limit}s)"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"; }

if [ "$mode" = bench ]; then
  if [ -n "${SMALL:-}" ]; then
    sizes=64x1; big=64x1; device=cpu; models=U-Net,S; it="--warmup 0 --iters 1"; check=eager
  else
    sizes=512x12,256x24; big=512x12; device=auto; models=U-Net,S,L; it="--warmup 3 --iters 10"; check=eager,compile
  fi
  step fastpaths 150 $PY -m danie_nnunet.cli bench --device $device --configs $big --models ${models#U-Net,} \
       --modes $check --check-fast-paths
  step bench_eager 200 $PY -m danie_nnunet.cli bench --device $device --configs $sizes --models $models \
       --modes eager $it --out "$OUT/bench_eager.md"
  step bench_compile 230 $PY -m danie_nnunet.cli bench --device $device --configs $big --models $models \
       --modes compile $it --out "$OUT/bench_compile.md"
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
  step plan 240 nnUNetv2_plan_and_preprocess -d 992 -c 2d -np 8 -npfp 8
  for tr in nnUNetTrainer_bench DANIETrainer_bench; do
    step "train_$tr" 200 nnUNetv2_train 992 2d 0 -tr $tr -device $dev
    start=$EPOCHREALTIME
    nnUNetv2_predict -i $nnUNet_raw/Dataset992_Bench512/imagesTs -o $work/pred_$tr -d 992 -c 2d -tr $tr -f 0 \
      -device $dev > "$work/predict_$tr.log" 2>&1 || tail -20 "$work/predict_$tr.log"
    echo "$tr: nnUNetv2_predict of one volume with mirroring: $(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $start}") s" \
      >> "$OUT/predict_times.txt"
  done
  for run in $nnUNet_results/Dataset992_Bench512/*__2d; do  # per trainer: both epochs, the second is timed
    echo "$(basename $run): $(grep -h "Epoch time" $run/fold_0/training_log_*.txt | tr -s ' ' | paste -sd ';')"
  done > "$OUT/epoch_times.txt"
  cat "$OUT/epoch_times.txt" "$OUT/predict_times.txt"
fi
