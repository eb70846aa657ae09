#!/usr/bin/env bash
# One lent-GPU session (see Docs/TRAINING_GUIDE.md, "GPU figures"): writes everything under $OUT.
#  1. generate the 90-server, 31-day fleet (30 days train/validate + 1 held-out day);
#  2. train candidate configurations with the same sample budget, each backtested;
#  3. the stock-vs-ours training benchmark with a profile.
# Usage on the device: OUT=/some/dir bash bench/gpu_session.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
HOURS=${HOURS:-744}; EPOCHS=${EPOCHS:-12}; WINDOWS=${WINDOWS:-16384}; STEPS=${STEPS:-30}; DEVICE=${DEVICE:-gpu}
if [ -d .whl ] && [ "$DEVICE" = gpu ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU") | tee "$OUT/gpu.txt"
$PY -c "import torch, lightning, pandas, pytorch_forecasting as pf; print(torch.__version__, lightning.__version__, pandas.__version__, pf.__version__)" | tee -a "$OUT/gpu.txt"
$PY main.py generate --servers 90 --hours "$HOURS" --seed 42 --out_dir /tmp/fleet --no-progress 2>&1 | tail -1
common=(--data /tmp/fleet/server_metrics.parquet --epochs "$EPOCHS" --windows-per-epoch "$WINDOWS" --batch-size 256
        --val-windows 4096 --learning-rate 3e-3)
run() {  # name, extra args...
  local name=$1; shift
  local t0=$SECONDS
  $PY main.py train "${common[@]}" --models-dir "/tmp/models_$name" "$@" > "$OUT/train_$name.log" 2>&1
  echo "$name rc=$? seconds=$((SECONDS - t0))" | tee -a "$OUT/summary.txt"
  local dir; dir=$(readlink -f "/tmp/models_$name/latest")
  if [ -d "$dir" ]; then
    mkdir -p "$OUT/$name"
    cp "$dir"/*.json "$dir"/model.safetensors "$OUT/$name/" 2>/dev/null
    $PY -c "import json,sys; d=json.load(open('$dir/training_info.json')); h=d['backtest']['per_horizon']; print('$name', {k: round(v['improvement_vs_best_baseline'],3) for k,v in h.items()}, 'cover', {k: round(v['coverage_p10_p90_mean'],3) for k,v in h.items()}, 'val', round(d['best_val_loss'],4), 'sps', d['timings']['samples_per_second'])" | tee -a "$OUT/summary.txt"
  fi
}
run e96_h32 --encoder-length 96 --hidden-size 32 --hidden-continuous-size 16
run e48_h32 --encoder-length 48 --hidden-size 32 --hidden-continuous-size 16
run e96_h16 --encoder-length 96 --hidden-size 16 --hidden-continuous-size 8
run e192_h32 --encoder-length 192 --hidden-size 32 --hidden-continuous-size 16
$PY -m bench.bench_training --device "$DEVICE" --steps "$STEPS" --warmup 5 --profile --data /tmp/fleet/server_metrics.parquet \
  --out "$OUT/bench_training_gpu.json" > "$OUT/bench_training_gpu.log" 2>&1
grep -E "^(data|device|pipeline|stock|ours|ratio)" "$OUT/bench_training_gpu.log" | tee -a "$OUT/summary.txt"
