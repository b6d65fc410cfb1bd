#!/usr/bin/env bash
# The GPU checks as one prepared run (issue 7): what the card is, the fast-step tests on CUDA, then
# bench_train.py on small (plain, hf, fast, overlap, pertensor, compiled; inline and +fused on demand) and base (fast, plain, hf), the
# multi-worker step's cost on one GPU (buckets, allreduce: small and base), and, when the wheels of
# Ray travel with it (benchmarks/gpu_wheels.py), pretraining under Ray Train
# (benchmarks/gpu_ray_check.sh).
#   OUT=bench_output bash benchmarks/gpu_check.sh      (on a machine with a CUDA GPU and torch)
#   STAGES="small ray" … runs only those stages (of: small base buckets tests ray, all by default;
#   and profile: profile_step.py --preset small --overlap, kernel time by kind and by stream;
#   data: bench_data_path.py, the data path with a corpus the size of all of Japanese Wikipedia;
#   allreduce: bench_allreduce.py over every visible GPU, the gradient buckets and the scaling model;
#   PROFILE_PRESET=base for base's, PROFILE_ARGS more flags, e.g. --fuse-linears);
#   SMALL_VARIANTS / BASE_VARIANTS pick bench_train.py variants, VARIANT_S each one's limit, TEST_K a
#   pytest -k expression (TEST_K=cuda: the CUDA cases alone), INDUCTOR Inductor settings for the
#   bench stages (bench_train.py --inductor; e.g. INDUCTOR="combo_kernels=True"), TAG a suffix
#   for their logs' names.
#   Their time limits (SMALL_S 360, BASE_S 300, BUCKETS_S 300, TEST_S 240 s; the ray stage's RUN1_S
#   220 + RUN2_S 150 + BENCH_S 120 + 60 s) add up to more than a session's 15 device minutes with
#   the machine's start: pick. The tests stage includes the bucketed all-reduce captured with NCCL
#   in a CUDA graph (one-rank group; passed on an H200, 2026-11-30).
#   The small/base/buckets stage limits are bench_train.py's --budget: a variant that no longer fits
#   is skipped and the stage's JSON line is still printed.
# Measured on one H200 (2026-11-29, a cold machine; its start took ~35 s of device time): card 12 s;
# small fast 101 s (74 s of it compiling), pertensor 34 s (Inductor's cache), base fast 89 s;
# tests -k cuda 60 s. 2026-11-30: small overlap 88 s, fast 89 s; tests -k 'cuda and buckets' 67 s;
# the ray stage 363 s (first run 150 s with a 77 s compile, resume 85 s, bench 98 s).
# Still to run on a GPU (docs/performance.md). First, one call, timeout_s 560 (~480 s): the batches
# built ahead on a side stream and the fused query/key/value projections (their CUDA tests; the
# `overlap` variant builds batches ahead, `inline` does not, `overlap+fused` also fuses):
#   OUT=$OUT STAGES='tests small data' TEST_K='built_ahead or data_wait or fused' TEST_S=120 SMALL_VARIANTS=overlap,inline,overlap+fused SMALL_S=330 VARIANT_S=140 bash benchmarks/gpu_check.sh
# (`data`: benchmarks/bench_data_path.py, the batch build's device time at full-corpus size, ~10 s)
# then where the step's time goes now, when the GPU's backward pass has each gradient bucket ready
# (bench_allreduce.py: its scaling model then rests on GPU timings), and the bucketed all-reduce
# in bf16 captured with NCCL (--allreduce-dtype bf16; timeout_s 420):
#   OUT=$OUT STAGES='tests profile allreduce' TEST_K=cuda-bf16 TEST_S=100 PROFILE_S=180 ALLREDUCE_S=60 bash benchmarks/gpu_check.sh
# then Inductor's combo kernels on small, and base with the second stream:
#   OUT=$OUT STAGES='small base' SMALL_VARIANTS=overlap INDUCTOR=combo_kernels=True TAG=_combo SMALL_S=150 BASE_VARIANTS=overlap,fast BASE_S=250 VARIANT_S=120 bash benchmarks/gpu_check.sh
# and the job with the second stream, the batches built ahead, the GPU-clocked data wait and its
# resumed run compiling from the run folder's compile cache with an empty local one (carry
# [".whl", "demo_output/instances", "demo_output/tokenizer"]; `make demo && .venv/bin/python benchmarks/gpu_wheels.py`):
#   command "OUT=$OUT STAGES=ray bash benchmarks/gpu_check.sh", timeout_s 560
# Logs go to $OUT; the last lines of each bench log are its JSON.
set -u
OUT=${OUT:-bench_output}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
T0=$(date +%s)
stamp() { echo "== $(( $(date +%s) - T0 )) s: $*"; }
stamp "card"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/gpu.txt"
STAGES=" ${STAGES:-small base buckets tests ray} "
IND=(); for x in ${INDUCTOR:-}; do IND+=(--inductor "$x"); done  # e.g. INDUCTOR="combo_kernels=True"
TAG=${TAG:-}  # a suffix for the bench logs' names (two runs of a stage in one call)
on() { [[ "$STAGES" == *" $1 "* ]]; }
if on small; then
stamp "bench small"
timeout $(( ${SMALL_S:-360} + 30 )) $PY benchmarks/bench_train.py ${IND[@]+"${IND[@]}"} --budget "${SMALL_S:-360}" --device cuda --preset small --variants "${SMALL_VARIANTS:-plain,hf,fast,overlap,pertensor,compiled}" \
  --steps "${STEPS:-60}" --timeout "${VARIANT_S:-200}" 2>&1 | tee "$OUT/bench_small$TAG.log"
fi
if on base; then
stamp "bench base"
timeout $(( ${BASE_S:-300} + 30 )) $PY benchmarks/bench_train.py ${IND[@]+"${IND[@]}"} --budget "${BASE_S:-300}" --device cuda --preset base --variants "${BASE_VARIANTS:-plain,hf,fast,overlap}" \
  --steps "${STEPS:-30}" --timeout "${VARIANT_S:-150}" 2>&1 | tee "$OUT/bench_base$TAG.log"
fi
if on buckets; then
stamp "bench buckets (the step of one of several workers, on a one-rank NCCL group)"
timeout $(( ${BUCKETS_S:-300} + 30 )) $PY benchmarks/bench_train.py ${IND[@]+"${IND[@]}"} --budget "${BUCKETS_S:-300}" --device cuda --preset small,base --variants buckets,allreduce \
  --steps "${STEPS:-30}" --timeout 140 2>&1 | tee "$OUT/bench_buckets$TAG.log"
fi
if on profile; then  # not in the default set: the step as the job runs it on one GPU, kernel by kernel
stamp "profile: ${PROFILE_PRESET:-small}, overlap (no graphs, so each kernel shows)"
timeout "${PROFILE_S:-200}" $PY benchmarks/profile_step.py --preset "${PROFILE_PRESET:-small}" --overlap ${PROFILE_ARGS:-} 2>&1 | tee "$OUT/profile$TAG.log"
fi
if on tests; then
stamp "fast-step tests on CUDA"
timeout "${TEST_S:-240}" $PY -m pytest -q --noconftest -p no:cacheprovider tests/test_fast_step.py ${TEST_K:+-k "$TEST_K"} 2>&1 | tee "$OUT/tests.log"
fi
if on data; then  # ~10 s: the data path at the size of all of Japanese Wikipedia, on the GPU
stamp "data path (a 1.4 GB corpus on the GPU)"
timeout "${DATA_S:-120}" $PY benchmarks/bench_data_path.py --device cuda 2>&1 | tee "$OUT/data_path.log"
fi
if on allreduce; then  # ~1 min: each gradient bucket's all-reduce over every visible GPU, when the
  # backward pass has it ready, and the scaling model for 1, 8 and 32 GPUs (bench_allreduce.py)
stamp "all-reduce"
for dt in ${ALLREDUCE_DTYPES:-fp32 bf16}; do  # each run's limit ALLREDUCE_S
  timeout "${ALLREDUCE_S:-120}" $PY benchmarks/bench_allreduce.py --device cuda --preset "${ALLREDUCE_PRESETS:-small,base}" \
    --allreduce-dtype "$dt" 2>&1 | tee "$OUT/allreduce_$dt.log"
done
fi
if on ray; then
  if ls "${WHL:-.whl}"/ray-*.whl >/dev/null 2>&1 || $PY -c "import ray" 2>/dev/null; then
    stamp "pretraining under Ray Train"
    OUT=$OUT PY=$PY bash benchmarks/gpu_ray_check.sh
  else
    stamp "no Ray and no .whl/: the Ray Train stage is skipped (python benchmarks/gpu_wheels.py, carry .whl)"
  fi
fi
stamp "done"
