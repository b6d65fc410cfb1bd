#!/usr/bin/env bash
# Pretraining under Ray Train on a GPU (issue 4), the job exactly as a user runs it: `small`, bf16,
# the fast step, checkpoints; then the same run resumed for more steps, exported, and the export
# loaded with the Auto classes on the GPU.
#
# Here, first:   make demo && python benchmarks/gpu_wheels.py   (instances + the wheels the image lacks)
# On the GPU machine (device run, carry [".whl", "demo_output/instances", "demo_output/tokenizer"]):
#   OUT=$OUT bash benchmarks/gpu_ray_check.sh          (or through benchmarks/gpu_check.sh)
# Logs and metrics.jsonl go to $OUT; the last line is one JSON object.
# A dry run of the same script on a CPU (checks that the wheels are all Ray Train needs, in a venv
# holding only what the GPU image holds): DEVICE=cpu PRESET=tiny STEPS1=40 STEPS2=60 CPUS=1 bash …
# (PRETRAIN_ARGS="--fast-step on": with the fast step, which a CPU runs only when asked)
set -u
OUT=${OUT:-bench_output}
mkdir -p "$OUT"
PY=${PY:-python3}
DATA=${DATA:-demo_output}
WHL=${WHL:-.whl}
STEPS1=${STEPS1:-1000}   # first run
STEPS2=${STEPS2:-1250}   # resumed to here
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-small}
GPU_FLAG=(); [ "$DEVICE" = cuda ] && GPU_FLAG=(--use-gpu)
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# without Ray's dashboard packages (not carried) the state API is off: drop the cleaner's complaint
quiet() { grep --line-buffered -v "State API may be temporarily unavailable" | tee "$1"; }
T0=$(date +%s)
stamp() { echo "== $(( $(date +%s) - T0 )) s: $*"; }

if ! $PY -c "import ray" 2>/dev/null; then
  if ! ls "$WHL"/ray-*.whl >/dev/null 2>&1; then
    echo "no Ray here and no .whl/ to install it from: run 'python benchmarks/gpu_wheels.py' and carry .whl"
    exit 2
  fi
  stamp "installing $(ls "$WHL" | wc -l) wheels into /tmp/site"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  export PATH=/tmp/site/bin:$PATH
fi
for d in instances tokenizer; do
  [ -d "$DATA/$d" ] || { echo "$DATA/$d: missing (make demo here, then carry it)"; exit 2; }
done
$PY -c "import ray, torch; print('ray', ray.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 2

RUNS=/tmp/gpu-ray-runs HF=/tmp/gpu-ray-hf
rm -rf "$RUNS" "$HF"
args=(--data "$DATA/instances" --tokenizer "$DATA/tokenizer" --storage-path "$RUNS" --name run
      --preset "$PRESET" "${GPU_FLAG[@]}" --num-workers 1 --cpus-per-worker "${CPUS:-8}" --batch-size 128
      --total-steps "$STEPS2" --warmup-steps 500 --log-every 250 --checkpoint-every 1000
      --eval-every 1000 --eval-instances 256 ${PRETRAIN_ARGS:-})  # e.g. PRETRAIN_ARGS="--fast-step on" on a CPU
stamp "pretrain.py --preset $PRESET ${GPU_FLAG[*]}, $STEPS1 steps"
timeout "${RUN1_S:-220}" $PY jobs/pretrain.py "${args[@]}" --max-steps "$STEPS1" 2>&1 | quiet "$OUT/ray_run.log"
rc=${PIPESTATUS[0]}
if [ "$rc" != 0 ]; then  # nothing to resume, export or compare: keep the device time
  stamp "the first run ended with status $rc (124: its ${RUN1_S:-220} s ran out); the rest is skipped"
  cp "$RUNS/run/metrics.jsonl" "$OUT/ray_metrics.jsonl" 2>/dev/null
  exit 1
fi
stamp "the same run resumed to $STEPS2 steps, as on a new node: an empty local compile cache (the run folder's only)"
TORCHINDUCTOR_CACHE_DIR=$(mktemp -d /tmp/inductor-new-node.XXXX) timeout "${RUN2_S:-150}" $PY jobs/pretrain.py "${args[@]}" --max-steps "$STEPS2" 2>&1 | quiet "$OUT/ray_resume.log"
cp "$RUNS/run/metrics.jsonl" "$OUT/ray_metrics.jsonl" 2>/dev/null
VOCAB=$(wc -l < "$DATA/tokenizer/vocab.txt")
# the step the job ran: on one GPU with --fast-overlap auto, the generator's backward on a second stream
export VARIANT=${VARIANT:-overlap}
if [ "$DEVICE" = cuda ]; then  # the same step outside Ray (same vocabulary and shapes): the overhead
  stamp "the fast step ($VARIANT) without Ray, vocabulary $VOCAB"
  timeout "${BENCH_S:-120}" $PY benchmarks/bench_train.py --device cuda --preset "$PRESET" --variants "$VARIANT" \
    --vocab "$VOCAB" --steps 300 --timeout 110 2>&1 | tee "$OUT/ray_bench.log"
fi
stamp "export"
timeout 60 $PY jobs/export.py --run "$RUNS/run" --output "$HF" 2>&1 | tee "$OUT/ray_summary.log"
stamp "the export on $DEVICE"
DEVICE=$DEVICE OUT=$OUT RUNS=$RUNS HF=$HF $PY - <<'EOF' 2>&1 | tee -a "$OUT/ray_summary.log"
import json, os, torch
dev = os.environ["DEVICE"]
from transformers import AutoModelForMaskedLM, AutoModelForPreTraining
rows = [json.loads(l) for l in open(os.path.join(os.environ["RUNS"], "run", "metrics.jsonl"))]
train = [r for r in rows if "steps_per_s" in r]
evals = [r for r in rows if "eval_disc_acc" in r]
out = {"steps": rows[-1]["step"], "steps_per_s": [round(r["steps_per_s"], 1) for r in train],
       "data_wait_share": [round(r.get("data_wait_share", 0), 4) for r in train],
       "mfu": [round(r["mfu"], 4) for r in train if "mfu" in r],
       "gen_loss": [round(r["gen_loss"], 3) for r in train], "disc_loss": [round(r["disc_loss"], 4) for r in train]}
bench = os.path.join(os.environ["OUT"], "ray_bench.log")
lines = [l for l in open(bench) if l.startswith("{")] if os.path.exists(bench) else []
fast = json.loads(lines[-1]).get(os.environ["VARIANT"] + "_steps_per_s") if lines else None
if fast and train:
    windows = sorted(r["steps_per_s"] for r in train[1:] or train)
    ray_rate = windows[len(windows) // 2]  # the median report window (the first holds the graph warm-up)
    out.update(no_ray_steps_per_s=round(fast, 1), ray_median_steps_per_s=round(ray_rate, 1),
               ray_overhead=round(fast / ray_rate - 1, 4))
def job_json(name):  # the job's last line: its result, with the fast step's compile figures
    path = os.path.join(os.environ["OUT"], name)
    lines = [l for l in open(path) if l.startswith("{")] if os.path.exists(path) else []
    return json.loads(lines[-1]).get("fast_step") if lines else None
out.update(compile_first=job_json("ray_run.log"), compile_resumed_new_node=job_json("ray_resume.log"))
if evals:
    e = evals[-1]
    out.update(eval_gen_acc=e["eval_gen_acc"], eval_disc_acc=e["eval_disc_acc"],
               eval_baseline=1 - e["eval_replaced_share"], eval_recall=e["eval_replaced_recall"])
for kind, cls in (("discriminator", AutoModelForPreTraining), ("generator", AutoModelForMaskedLM)):
    m = cls.from_pretrained(os.path.join(os.environ["HF"], kind)).to(dev).eval()
    ids = torch.randint(5, m.config.vocab_size, (8, 128), device=dev)
    with torch.no_grad(), torch.autocast(dev, torch.bfloat16):
        out[f"{kind}_logits_finite"] = bool(torch.isfinite(m(input_ids=ids).logits).all())
print(json.dumps(out))
EOF
stamp "done"
