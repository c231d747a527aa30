#!/usr/bin/env bash
# CUDA checks and GPU figures in one go, for a machine with an NVIDIA GPU and PyTorch (CI has none):
# the CUDA tests, the pretraining-step benchmark on the GPU, a short BERT-base pretraining run, then the whole
# test suite (recipes and pipelines default to device auto, so they run on the GPU there).
#   bash bench/cuda_suite.sh            # logs go to $OUT (default /tmp/cuda-suite)
# Optional inputs: .devdata/shards (a `bertforge data prepare` folder) and .devdata/whl (wheels to install).
set -u
OUT=${OUT:-/tmp/cuda-suite}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PIP_NO_INDEX=1
export BERTFORGE_CACHE=${BERTFORGE_CACHE:-/tmp/bertforge-cache}
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
$PY -c "import torch, transformers, tokenizers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__)"
if [ -d .devdata/whl ]; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .devdata/whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, show the end
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "   exit $? after ${SECONDS}s in all"
  tail -n "${TAIL:-12}" "$OUT/$name.log"
}

step cuda-tests 150 $PY -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider
TAIL=6 step bench-fp32 120 $PY -m bench.pretrain_step --device cuda --steps 50
TAIL=6 step bench-bf16 120 $PY -m bench.pretrain_step --device cuda --steps 50 --precision bf16
TAIL=6 step bench-bf16-b256 120 $PY -m bench.pretrain_step --device cuda --steps 30 --precision bf16 --batch 256
if [ -d .devdata/shards ]; then
  TAIL=4 step pretrain-base 150 $PY -m bertforge pretrain --config pretrain-base-gpu --data .devdata/shards \
    --out /tmp/base-run --max-steps 300 --eval-every 150 --save-every 300 --progress false
  cp /tmp/base-run/metrics.jsonl "$OUT/pretrain-base-metrics.jsonl" 2>/dev/null
  grep '"split": "valid"' /tmp/base-run/metrics.jsonl | tail -n 2
  grep '"split": "train"' /tmp/base-run/metrics.jsonl | tail -n 1
fi
TAIL=25 step suite "${SUITE_SECONDS:-240}" $PY -m pytest -q -rfs -n 8 -p no:cacheprovider
