"""Shrink wheels for an air-gapped GPU host whose transfers are size-limited.

bitsandbytes ships one CUDA library per CUDA version (~130 MB unpacked); a host needs one.
unsloth ships its "studio" web app (~60 MB) that training never imports. This rewrites such wheels
without those members (and their RECORD lines); pip installs the result as usual.

    python training/gpu/slim_wheels.py WHEEL_DIR --cuda 130
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path

RULES = {
    "bitsandbytes-": lambda name, cuda: (
        bool(re.search(r"libbitsandbytes_cuda\d+", name)) and f"cuda{cuda}" not in name
    ),
    "unsloth-20": lambda name, cuda: name.startswith("studio/"),
}


def slim(wheel: Path, cuda: str) -> None:
    rule = next((r for prefix, r in RULES.items() if wheel.name.startswith(prefix)), None)
    if rule is None:
        return
    tmp = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {info.filename for info in src.infolist() if rule(info.filename, cuda)}
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = (
                    "\n".join(line for line in lines if line.split(",", 1)[0] not in dropped) + "\n"
                ).encode()
            dst.writestr(info, data)
    before = wheel.stat().st_size
    tmp.replace(wheel)
    print(
        f"{wheel.name}: {before / 2**20:.1f} → {wheel.stat().st_size / 2**20:.1f} MiB "
        f"({len(dropped)} files dropped)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument(
        "--cuda", default="130", help="CUDA version tag to keep for bitsandbytes (e.g. 130 = 13.0)"
    )
    options = parser.parse_args()
    for path in sorted(options.folder.glob("*.whl")):
        slim(path, options.cuda)
