#!/usr/bin/env bash
# Issue 4's GPU checks, one device call per mode; results are written under $OUT (at most 8 files come back).
# Every DANIE row of the tables is first checked against the plain network in fp32 (same weights, input and loss:
# relative L2 error of outputs and gradients at most 2x the plain network's own bf16 error + 1e-3), then timed.
# Timings: a DANIE row takes about 20 s on the H200 without the single-tile columns, 60 s or more with them on a
# cold H100 (cuDNN autotunes each new shape; every bench row now logs how long it took); compiling DANIE-L takes
# over 3 minutes; the compile step below took about 6 minutes on the H100 (2026-11-26).
#
# Here, before the calls (builds .whl/ with nnU-Net's packages and this package's wheel):
#   bash ../shared/device/prepare-wheels.sh && python3 -m pip wheel -q --no-deps -w .whl .
# A session's 15 minutes of device time (machine start about 30 s) hold two of these; first eager (does compiling,
# the trainers' default since 2026-11-27, pay against eager on one card?), then compile with MODELS=S,U-Net (the
# compiled DANIE-S, never timed) or e2e:
# eager (about 6 min): the eager channels-last rows of U-Net, L and S at 512x12 with single-tile and CUDA graph
#   columns (DANIE's training with nnUNet_compile=f and its default inference, and nnU-Net's eager U-Net, on one
#   card), and L with as little recomputation as fits 12 GiB (cl+fit12) and with its LayerNorms in bf16 (cl+fn)
#   run(command="bash bench/gpu_checks.sh eager", carry=[".whl"], timeout_s=380)
# e2e (about 6 min): nnUNetv2_train epoch time (both eager) and nnUNetv2_predict seconds, DANIE-L vs nnU-Net;
#   DANIE-L's predict runs with the trainer's defaults (CUDA graphs, mirror batching) and again without both,
#   segmentations compared
#   run(command="bash bench/gpu_checks.sh e2e", carry=[".whl"], timeout_s=480 or what is left)
# compile (about 7 min): graph breaks, then the compiled table (DANIE-L first, with its check); MODELS=S,U-Net for
#   DANIE-S (the trainers compile by default since 2026-11-27; the compiled DANIE-S was first timed on 2026-11-27)
#   run(command="bash bench/gpu_checks.sh compile", carry=[".whl"], timeout_s=540)
# defaults (about 9.5 min, one call): compiled DANIE-S and U-Net (checked and timed), then eager DANIE-S and DANIE-L
#   run(command="bash bench/gpu_checks.sh defaults", carry=[".whl"], timeout_s=590)
# profile_compiled (about 9 min, one call): device-busy share and kernels of the compiled DANIE-S and DANIE-L steps,
#   device and host time by family, library calls by input shape; MODELS=L (about 5 min) profiles one of them; its
#   "Inductor-generated (Triton)" kernel count checks bench/gpu_launches.py's CPU proxy (DANIE-S 2 585;
#   L 2 594 before the q, k, v split, which took 22 off S); then each step's floor and launch bound (step_bounds.md)
#   run(command="bash bench/gpu_checks.sh profile_compiled", carry=[".whl"], timeout_s=590)
# mirror (about 1.5 min): nnU-Net's mirrored single tiles, DANIE-S and DANIE-L, with and without mirror batching
#   run(command="bash bench/gpu_checks.sh mirror", carry=[".whl"], timeout_s=200)
# overhead (at most 9.5 min, one call): ES alone before and since its split (seconds), then the compiled DANIE-S's
#   training step as the trainer compiles it by default (inductor: the baseline, timed in the same call), then with
#   bf16 values stored before their upcasts, autocast's weight casts done as one bf16 copy and Inductor's realise
#   thresholds raised (up+wcopy+fuse: DANIE_upcast_per_use, DANIE_cast_weights_once, DANIE_larger_fusions), then
#   the three replayed as CUDA graphs (reduce-overhead+up+wcopy+fuse: by the README's estimates DANIE-S's 1.0x needs
#   both the fewer bytes and no host launches), then up+wcopy, then reduce-overhead alone, then up and wcopy alone,
#   then reduce-overhead+wcopy,
#   checked and timed, as many as fit its 575 s budget
#   (a row is skipped, not cut, when less than 150 s is left); SETTINGS=... (also combo-kernels, and combinations
#   such as combo-kernels+wcopy+up) MODELS=... STEP_LIMIT=... BUDGET=... MIN_STEP=... change the rows
#   run(command="bash bench/gpu_checks.sh overhead", carry=[".whl"], timeout_s=590)
# bench (about 6 min): the eager table with every fast variant at 512x12 and 256x24, a kernel profile
#   run(command="bash bench/gpu_checks.sh bench", carry=[".whl"], timeout_s=420)
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
# BUDGET: seconds this call may take in all, counted from the script's start (the installation included): each step
# gets at most what is left, and a step that would get less than MIN_STEP (60 s) is logged as skipped instead of
# being cut, so that the device tool's own timeout never ends the call with a step half done. Unset: no budget.
if [ "$mode" = overhead ] && [ -z "${SMALL:-}" ]; then  # three compiled rows of about 3-4 min each: those that fit
  budget=${BUDGET:-575}; min_step=${MIN_STEP:-150}
else
  budget=${BUDGET:-}; min_step=${MIN_STEP:-60}
fi
# one log for all steps (at most 8 files come back from $OUT), warnings kept: they name torch.compile's graph breaks
step() { local name=$1 limit=$2 left; shift 2
         if [ -n "$budget" ]; then
           left=$((budget - SECONDS))
           if [ "$left" -lt "$min_step" ]; then
             echo "== $name skipped: ${left}s of the ${budget}s budget left (MIN_STEP=${min_step})" | tee -a "$OUT/log.txt"
             return 0
           fi
           [ "$left" -lt "$limit" ] && limit=$left
         fi
         echo "== $name (limit ${limit}s, at $(date +%T))" | tee -a "$OUT/log.txt"
         timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt" | grep --line-buffered -v "Warning\|warnings.warn"; }

if [ -n "${SMALL:-}" ]; then
  big=64x2; small=32x4; device=cpu; it="--warmup 0 --iters 1"
else
  big=512x12; small=256x24; device=auto; it="--warmup 3 --iters 10"
fi
bench="$PY -m danie_nnunet.cli bench --device $device $it"
if [ "$mode" = eager ]; then
  # rows that would start after 200 s are listed as skipped instead of the step being cut (the old `first` mode,
  # this step plus compile's second in one call, gave it 130 s: on a cold H100 it ended after the U-Net row)
  # L's eager row answers whether compiling pays; cl+fit12 recomputes as little as fits 12 GiB (memory.py's plan:
  # issue 4's memory target at its cost), cl+fn runs MaxViT's LayerNorms in bf16; the variants reuse cl's
  # autotuned shapes in the same process. Then S (new shapes, a new process)
  step bench_eager 230 $bench --configs $big --models U-Net,L --modes eager --variants cl,cl+fit12,cl+fn \
       --time-budget 170 --out "$OUT/bench_eager.md"
  step bench_eager_S 110 $bench --configs $big --models S --modes eager --variants cl --out "$OUT/bench_eager_S.md"
elif [ "$mode" = defaults ]; then
  # one call (about 9.5 min) for a session whose card has not run the trainers' default yet: the compiled DANIE-S
  # (checked, timed, peak against memory.py's compiled estimate) and the compiled U-Net, then the eager DANIE-S and
  # DANIE-L on the same card: whether compiling pays, both models, one card
  step bench_compile 330 $bench --configs $big --models S,U-Net --modes compile --variants cl --time-budget 250 \
       --out "$OUT/bench_compile.md"
  step bench_eager_S 100 $bench --configs $big --models S --modes eager --variants cl --out "$OUT/bench_eager_S.md"
  step bench_eager_L 120 $bench --configs $big --models L --modes eager --variants cl --out "$OUT/bench_eager_L.md"
elif [ "$mode" = profile_compiled ]; then
  # the compiled DANIE-S stepped slower (128.2 ms, 2026-11-27) than the compiled DANIE-L (108.6 ms, 2026-11-26),
  # both on an H100, with the same operators and narrower channels: how much of each compiled step the device is
  # busy, and which kernels take the time, S and L in one call
  # (2026-11-27, H100: S's kernels kept the device busy 64.1 of 115.4 ms, bound by the host); MODELS=L for L alone
  for m in $(echo "${MODELS:-S,L}" | tr , ' '); do
    [ "$m" = S ] && limit=270 || limit=300
    step "profile_$m" $limit $bench --configs $big --models "$m" --variants cl --modes compile --profile \
         --out "$OUT/profile_${m}_compiled.txt"
  done
  # each profiled step's floor and launch bound (bench/step_bounds.py) with the bytes that Inductor's H100 code
  # moves by the CPU's count: the default compile's, then the three flags' (the library calls stay the same)
  if [ -z "${SMALL:-}" ]; then  # a CPU profile has no device times
    counts="$here/../docs/measurements"
    for m in $(echo "${MODELS:-S,L}" | tr , ' '); do
      [ -s "$OUT/profile_${m}_compiled.txt" ] || continue
      if [ "$m" = S ]; then default=(2026-12-07f-cpu/gpu_bytes_512x12_S_cl_qkv_split.md "DANIE-S, bf16")
      else default=(2026-12-07c-cpu/gpu_bytes_512x12_gpu_rules.md "DANIE-L, bf16"); fi
      $PY "$here/step_bounds.py" --profile "$OUT/profile_${m}_compiled.txt" \
          --bytes "$counts/${default[0]}" --row "${default[1]}" \
          --bytes "$counts/2026-12-07f-cpu/gpu_bytes_512x12_${m}_qkv_split.md" --row "larger fusions" 2>&1 \
        | grep -v "Warning\|warnings.warn" | tee -a "$OUT/step_bounds.md"
    done
  fi
elif [ "$mode" = mirror ]; then
  # nnU-Net's test-time mirroring of single tiles with and without DANIE's mirror batching (CUDA graphs both)
  if [ -n "${SMALL:-}" ]; then size=64; tiles=3; else size=512; tiles=50; fi
  step mirror 150 $PY "$here/mirror_batching.py" --models S,L --size $size --tiles $tiles --device $device
  grep "^|\|^device" "$OUT/log.txt" > "$OUT/mirror_batching.md"
elif [ "$mode" = overhead ]; then
  # the compiled DANIE-S step with fewer launches from the host, each setting checked against the plain network and
  # its training step timed (the compiled DANIE-S on the H100: device busy 64.1 of 115.4 ms, bound by the host):
  # reduce-overhead replays the step as CUDA graphs (the row says whether Inductor replayed or skipped them),
  # combo-kernels launches up to 8 independent generated kernels as one (danie_nnunet/compiled.py). A compiled S row
  # took 312 s on the H100 with its inference columns, which --train-only leaves out. First (seconds): ES alone at
  # DANIE's four levels, before and since its energy is split over chunks of positions (bench/channel_attention.py)
  if [ -n "${SMALL:-}" ]; then es_size="--size 64 --batch 2 --iters 1"; else es_size=""; fi
  step channel_attention 60 $PY "$here/channel_attention.py" --device $device $es_size \
       --out "$OUT/channel_attention.md"
  # wcopy: the default compile of the cl+wcopy variant (danie_nnunet/weight_cast.py: DANIE-S launches 1 993 Triton
  # kernels per step against 2 607, by bench/gpu_launches.py's CPU proxy), alone or after + with an Inductor setting
  # up: the default compile of the cl+up variant (danie_nnunet/upcast_per_use.py, DANIE_upcast_per_use: DANIE-S's
  # generated kernels move 72.1 GB per step against 81.6, by the same proxy)
  # up+wcopy: both (the cl+wcopy+up variant: DANIE-S 1 997 launches and 67.0 GB by the same proxy); inductor: the
  # plain compiled cl row, the baseline timed in the same call; up+wcopy+fuse: the three (cl+wcopy+up+fuse:
  # compiled.LARGER_FUSIONS; DANIE-S 1 870 launches and 49.8 GB by the same proxy since the q, k, v split). A setting
  # is an Inductor backend and/or wcopy and/or up (and fuse with both), joined by +
  for setting in ${SETTINGS:-inductor up+wcopy+fuse reduce-overhead+up+wcopy+fuse up+wcopy reduce-overhead up wcopy \
                             reduce-overhead+wcopy}; do
    backend=inductor; copies=; upcast=; fuse=
    for part in ${setting//+/ }; do
      case $part in wcopy) copies=+wcopy ;; up) upcast=+up ;; fuse) fuse=+fuse ;; *) backend=$part ;; esac
    done
    variant=cl$copies$upcast$fuse
    step "overhead_$setting" "${STEP_LIMIT:-280}" $bench --configs $big --models "${MODELS:-S}" --modes compile \
         --variants $variant --compile-backend "$backend" --train-only --out "$OUT/bench_overhead_$setting.md"
  done
elif [ "$mode" = bench ]; then
  step bench_eager 250 $bench --configs $big --models U-Net,S,L --modes eager --variants plain,cl,cl+rc \
       --out "$OUT/bench_eager.md"
  step bench_eager_small 100 $bench --configs $small --models U-Net,S,L --modes eager --variants cl \
       --out "$OUT/bench_eager_small.md"
  step profile 45 $bench --configs $big --models L --variants cl --profile --out "$OUT/profile_L.txt"
elif [ "$mode" = compile ]; then
  models=${MODELS:-L,U-Net}; first=${models%%,*}  # graph breaks of the first model (L, or S with MODELS=S,U-Net)
  step explain 90 $bench --configs $big --models $first --variants cl --explain --out "$OUT/explain_$first.txt"
  # the L row is checked against the plain network first (PASS/FAIL): the first compiled run since the backward
  # is traced outside autocast (danie_nnunet/compiled.py); on the H200 before that its gradients were NaN
  step bench_compile 400 $bench --configs $big --models $models --modes compile --variants cl \
       --out "$OUT/bench_compile.md"
elif [ "$mode" = e2e ]; then
  work=/tmp/danie_e2e; rm -rf $work
  export nnUNet_raw=$work/raw nnUNet_preprocessed=$work/pre nnUNet_results=$work/res
  export nnUNet_extTrainer="$($PY -m danie_nnunet.cli ext-path):$here/nnunet_ext"
  # both trainers eager: compiling DANIE-L (its trainer's default, as the U-Net's) takes minutes more than a call
  # holds; the compiled step times are the bench's, and epoch minus iterations x step is the data loading's share
  export nnUNet_compile=f
  if [ -n "${SMALL:-}" ]; then shape="(6, 64, 64)"; test_shape="(8, 64, 64)"; dev=cpu; export DANIE_BENCH_ITERATIONS=2; else shape="(40, 512, 512)"; test_shape="(100, 512, 512)"; dev=cuda; fi
  $PY - <<PYEOF
import os, numpy as np
from danie_nnunet.synthetic import write_dataset, make_case, _write
p = write_dataset(os.environ["nnUNet_raw"], 992, "Bench512", num_train=10, num_test=0, shape=$shape,
                  spacing=(2.5, 0.76, 0.76))
image, label = make_case(np.random.default_rng(1), $test_shape)
_write(image, (2.5, 0.76, 0.76), os.path.join(p["imagesTs"], "volume_0000.nii.gz"))
PYEOF
  step plan 100 nnUNetv2_plan_and_preprocess -d 992 -c 2d -np 8 -npfp 8
  # each log line of nnUNetv2_predict gets the seconds since its start: start-up, sliding window, export
  stamp='import sys, time
t0 = time.time()
for line in sys.stdin:
    sys.stdout.write("%6.1f s  %s" % (time.time() - t0, line))'
  predict() {  # what, limit, output folder, then VAR=value settings: one timed nnUNetv2_predict of the test volume
    local what=$1 limit=$2 dir=$work/$3 start=$EPOCHREALTIME rc result; shift 3
    env "$@" timeout "$limit" nnUNetv2_predict -i $nnUNet_raw/Dataset992_Bench512/imagesTs -o "$dir" -d 992 -c 2d \
      -tr $tr -f 0 -device $dev 2>&1 | $PY -u -c "$stamp" > "$dir.log"
    rc=${PIPESTATUS[0]}
    result="$(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $start}") s"
    if [ "$rc" != 0 ]; then  # a failed or cut run's time is no measurement
      result="FAILED (exit $rc$([ "$rc" = 124 ] && echo ", past its ${limit} s limit")) after $result"
      tail -c 3000 "$dir.log" | tee -a "$OUT/log.txt"
    fi
    echo "$tr: nnUNetv2_predict of one volume $test_shape with mirroring, $what: $result; phases: $(grep -o \
      '^ *[0-9.]* s  \(Predicting volume\|sending off\|Segmentation export complete\)' "$dir.log" | paste -sd ';')" \
      >> "$OUT/e2e_times.txt"
  }
  for tr in DANIETrainer_bench nnUNetTrainer_bench; do  # DANIE first: its numbers matter most if time runs out
    [ $tr = DANIETrainer_bench ] && limit=160 || limit=110
    step "train_$tr" $limit nnUNetv2_train 992 2d 0 -tr $tr -device $dev
    run=$nnUNet_results/Dataset992_Bench512/${tr}__nnUNetPlans__2d
    # both epochs; the second is the timed one; each epoch's time by part (trainers/epoch_timing.py)
    echo "$tr: $(grep -ho "'batch_size': [0-9]*\|'patch_size': \[[0-9, ]*\]\|Epoch time: [0-9.]* s\|Epoch time by part: .*s)" \
      $run/fold_0/training_log_*.txt | paste -sd ';')" \
      >> "$OUT/e2e_times.txt"
    if [ $tr = DANIETrainer_bench ]; then
      # the trainer's default replays CUDA graphs (danie_nnunet/cuda_graphs.py) of each tile batched with its flips
      # (danie_nnunet/mirror_batching.py); then without both, as nnU-Net would run the plain network
      predict "CUDA graphs and mirror batching (default)" 120 pred_graphs
      predict "eager, four calls per tile (DANIE_cuda_graphs=f DANIE_mirror_batching=f)" 120 pred_eager \
        DANIE_cuda_graphs=f DANIE_mirror_batching=f
      $PY -c "
import SimpleITK as sitk, numpy as np
a, b = (sitk.GetArrayFromImage(sitk.ReadImage('$work/' + d + '/volume.nii.gz')) for d in ('pred_graphs', 'pred_eager'))
print('$tr: segmentation of the default equal to the plain eager one in %.4f %% of voxels' % (100 * np.mean(a == b)))
" >> "$OUT/e2e_times.txt" 2>&1
    else
      predict "nnU-Net's default" 90 pred_unet
    fi
  done
  cat "$OUT/e2e_times.txt"
fi
