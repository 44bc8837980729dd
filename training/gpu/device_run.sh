#!/usr/bin/env bash
# The GPU session, from the repo root on the CUDA host:
#   bash training/gpu/device_run.sh STAGE [--wheels DIR]... [-- BENCH FLAGS]
# STAGE is install | train | bench | test. Each `--wheels DIR` (a path, relative to the repo root
# or absolute; repeatable) is a folder of wheels installed first (training/gpu/install_wheels.sh).
# Anything after `--` goes to the benchmark (`python3 -m bench.train --json ...`), `bench` stage
# only. Every `random:*` base here takes the tokenizer in .gpu/tokenizer: make it where lorabot
# is installed with `python -m training.cli save-tokenizer .gpu/tokenizer` and carry it along.
#   bash training/gpu/device_run.sh install --wheels .wheels/p1     # first transfer: install + probe
#   bash training/gpu/device_run.sh train --wheels .wheels/p2       # second: install the rest, Unsloth baseline run + export
#   bash training/gpu/device_run.sh bench -- --steps 40            # `lorabot bench train` (a)..(f)
#   bash training/gpu/device_run.sh bench --wheels .wheels/p1 -- --cases levers --steps 24 --profile
#                                                                   # the lever sweep, one fresh machine
# .wheels/p1 = every wheel but pyarrow/pandas/tzdata/dateutil/converter (~33 MiB: fits one transfer;
# the image's pyarrow and pandas serve `datasets`); .wheels/p2 = those, for `train`'s export.
#   bash training/gpu/device_run.sh test --wheels .wheels/p2       # after `install` on the same machine: the CUDA-only tests
set -uo pipefail
usage="usage: bash training/gpu/device_run.sh install|train|bench|test [--wheels DIR]... [-- BENCH FLAGS]"
stage=${1:-}; shift || true
case $stage in install|train|bench|test) ;; *) echo "$usage" >&2; exit 2 ;; esac
wheel_dirs=(); bench_flags=()
while [ $# -gt 0 ]; do
  case $1 in
    --wheels) [ $# -ge 2 ] || { echo "--wheels needs a folder; $usage" >&2; exit 2; }
              [ -d "$2" ] || { echo "--wheels $2: no such folder" >&2; exit 2; }
              wheel_dirs+=("$2"); shift 2 ;;
    --) shift; bench_flags=("$@"); break ;;
    *) echo "unexpected argument '$1' (a wheel folder is --wheels DIR, benchmark flags go after --); $usage" >&2; exit 2 ;;
  esac
done
if [ ${#bench_flags[@]} -gt 0 ] && [ "$stage" != bench ]; then
  echo "flags after -- are for the bench stage only; $usage" >&2; exit 2
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export LORABOT_CACHE_DIR=/tmp/lorabot-cache LORABOT_RANDOM_TOKENIZER=$PWD/.gpu/tokenizer
export TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/lorabot-out}; mkdir -p "$OUT" /tmp/lorabot-gpu
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
    python3 -m training.data.synthetic /tmp/lorabot-gpu/finetome-like.jsonl --count 3000  # the dataset the config reads
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
    python3 -c "import importlib.metadata as md; print(' '.join(f'{n} {md.version(n)}' for n in ['torch', 'transformers', 'trl', 'peft', 'unsloth', 'unsloth_zoo', 'bitsandbytes', 'datasets', 'pyarrow', 'pandas']))" | tee "$OUT/versions.txt"
    python3 -m bench.train --json --partial "$OUT/cases.jsonl" "${bench_flags[@]}" 2> "$OUT/bench.stderr" | tee "$OUT/bench.json"
    tail -40 "$OUT/bench.stderr"
    python3 -c "import json,sys; from bench.train import table; print(table(json.load(open('$OUT/bench.json'))))"
    ;;
esac
