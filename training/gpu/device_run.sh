#!/usr/bin/env bash
# The GPU session, from the repo root on the CUDA host (wheels carried in .wheels/p1, .wheels/p2,
# the embedded model's tokenizer in .gpu/tokenizer):
#   bash training/gpu/device_run.sh install p1        # first transfer: install + probe
#   bash training/gpu/device_run.sh train p2          # second: install the rest, Unsloth baseline run + export
#   bash training/gpu/device_run.sh bench             # `lorabot bench train` (a)/(b)/(c)
#   bash training/gpu/device_run.sh test ../.gpu/whl  # the CUDA-only pytest tests (pytest wheels in .gpu/whl)
set -uo pipefail
stage=$1; shift
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export LORABOT_CACHE_DIR=/tmp/lorabot-cache LORABOT_RANDOM_TOKENIZER=$PWD/.gpu/tokenizer
export TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/lorabot-out}; mkdir -p "$OUT" /tmp/lorabot-gpu
wheel_dirs=(); for part in "$@"; do wheel_dirs+=(".wheels/$part"); done
source training/gpu/install_wheels.sh "${wheel_dirs[@]}" || exit 1
export PYTHONPATH="$PWD:$PYTHONPATH"
case $stage in
  install)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 - <<'PY'
import importlib, importlib.metadata as md
for name in ["torch", "transformers", "accelerate", "pyarrow", "pandas", "datasets", "trl", "peft", "pydantic",
             "rich", "typer", "sentencepiece", "protobuf", "psutil", "PIL", "xformers", "flash_attn", "triton"]:
    try:
        module = importlib.import_module(name)
        print(f"{name:14} {getattr(module, '__version__', '?')}  {getattr(module, '__file__', '')}")
    except Exception as error:
        print(f"{name:14} MISSING ({type(error).__name__}: {error})")
PY
    ;;
  train)
    python3 -c "import unsloth, trl, peft, bitsandbytes; print('unsloth', unsloth.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'bnb', bitsandbytes.__version__)" 2>&1 | tail -3
    python3 -c "
import json; from bench.train import synthetic_conversations
open('/tmp/lorabot-gpu/finetome-like.jsonl','w').write('\n'.join(json.dumps(r) for r in synthetic_conversations(3000)))"
    python3 -m training.cli train --config training/gpu/baseline-random-1b.toml 2>&1 \
      | grep -v "it/s]\|s/it]" | tee "$OUT/train.log" | tail -60
    cp /tmp/lorabot-gpu/baseline-random-1b/metrics.jsonl /tmp/lorabot-gpu/baseline-random-1b/run.json "$OUT/" 2>/dev/null
    ls -la /tmp/lorabot-gpu/baseline-random-1b/ | tee -a "$OUT/train.log"
    ;;
  test)  # the CUDA-only tests (they skip on CPU-only CI)
    python3 -m pytest -q -p no:cacheprovider -o log_cli=true --log-cli-level=WARNING \
      tests/test_training_gpu.py tests/test_training_bench.py 2>&1 | grep -v "it/s]\|s/it]\|examples/s]" | tail -60
    ;;
  bench)
    python3 -m training.cli bench-train --json "$@" 2> "$OUT/bench.stderr" | tee "$OUT/bench.json"
    tail -40 "$OUT/bench.stderr"
    python3 -c "import json,sys; from bench.train import table; print(table(json.load(open('$OUT/bench.json'))))"
    ;;
esac
