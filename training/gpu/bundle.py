"""Everything an air-gapped GPU host needs, in parts that fit a size-limited transfer.

    python training/gpu/bundle.py prepare .gpu/bundle [--python 3.12] [--cuda 130] [--dataset X] [--no-wheels]
    python training/gpu/bundle.py unpack .gpu/bundle/part-* --into .gpu        # on the GPU host

`prepare` (where lorabot is installed and PyPI is reachable; `make gpu-bundle`) stages

    wheels/     the training extras as wheels (training/gpu/download_wheels.sh, slimmed by slim_wheels.py)
    tokenizer/  the embedded SmolLM2's tokenizer, for `random:*` bases
                (`python -m training.cli save-tokenizer`)
    data/       finetome-like.jsonl (synthetic, FineTome-100k's lengths) and, with --dataset, that dataset
                as parquet (a hub id such as mlabonne/FineTome-100k needs network here, not there)

and packs them into `part-1/`, `part-2/`, ... of at most --part-size bytes each (default 60 MiB: the
device transfer takes 64 MiB a call). Whole files go into the first part with room; a file bigger
than a part is cut into pieces in consecutive parts. Each part carries a MANIFEST.json (the
file list with sha256s), so `unpack` can check and join them, and say which part is missing.

Standard library only: it runs on the GPU host before anything is installed there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MiB = 2**20
DEFAULT_PART_SIZE = 60 * MiB
MANIFEST = "MANIFEST.json"
MANIFEST_ROOM = 256 * 1024  # kept free in each part for its manifest
REPO_ROOT = Path(__file__).resolve().parents[2]


class BundleError(Exception):
    """Something a user can fix: the message says what."""


@dataclass
class Piece:
    path: str  # relative to the staging folder, posix
    index: int  # piece number of the file (0 for a whole file)
    count: int  # pieces of the file
    offset: int
    size: int


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def plan(files: dict[str, int], part_size: int) -> list[list[Piece]]:
    """Pieces per part: big files first, each whole into the first part with room (first fit);
    files over a part's capacity are cut into capacity-sized pieces, one part each."""
    capacity = part_size - MANIFEST_ROOM
    if capacity <= 0:
        raise BundleError(f"--part-size {part_size} is too small (at least {MANIFEST_ROOM + 1} bytes)")
    parts: list[list[Piece]] = []
    free: list[int] = []
    for path, size in sorted(files.items(), key=lambda item: (-item[1], item[0])):
        if size > capacity:
            count = -(-size // capacity)
            for index in range(count):
                offset = index * capacity
                parts.append([Piece(path, index, count, offset, min(capacity, size - offset))])
                free.append(capacity - parts[-1][0].size)
            continue
        slot = next((i for i, room in enumerate(free) if room >= size), None)
        if slot is None:
            parts.append([])
            free.append(capacity)
            slot = len(parts) - 1
        parts[slot].append(Piece(path, 0, 1, 0, size))
        free[slot] -= size
    return parts


def pack(staging: Path, dest: Path, part_size: int = DEFAULT_PART_SIZE) -> list[Path]:
    """Write staging's files into dest/part-N folders of at most part_size bytes each."""
    files = {
        p.relative_to(staging).as_posix(): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()
    }
    if not files:
        raise BundleError(f"nothing to pack in {staging}")
    hashes = {path: sha256(staging / path) for path in files}
    layout = plan(files, part_size)
    shutil.rmtree(dest, ignore_errors=True)
    written = []
    for number, pieces in enumerate(layout, 1):
        folder = dest / f"part-{number}"
        entries = []
        for piece in pieces:
            name = piece.path if piece.count == 1 else f"{piece.path}.piece-{piece.index:03d}"
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(staging / piece.path, "rb") as src, open(target, "wb") as out:
                src.seek(piece.offset)
                out.write(src.read(piece.size))
            entries.append(
                {
                    "path": piece.path,
                    "stored_as": name,
                    "piece": piece.index,
                    "pieces": piece.count,
                    "offset": piece.offset,
                    "size": piece.size,
                    "file_size": files[piece.path],
                    "file_sha256": hashes[piece.path],
                    "piece_sha256": sha256(target),
                }
            )
        manifest = {"part": number, "parts": len(layout), "files": entries}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        written.append(folder)
    return written


def part_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def unpack(parts: list[Path], into: Path) -> list[Path]:
    """Check every piece against its manifest and join the files into `into`; returns the files."""
    manifests = []
    for folder in parts:
        manifest_path = Path(folder) / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{folder} is not a bundle part (no {MANIFEST})")
        manifests.append((Path(folder), json.loads(manifest_path.read_text(encoding="utf-8"))))
    total = {m["parts"] for _, m in manifests}
    if len(total) != 1:
        raise BundleError("these parts come from different bundles (their part counts differ)")
    (count,) = total
    have = {m["part"] for _, m in manifests}
    if missing := sorted(set(range(1, count + 1)) - have):
        raise BundleError(
            f"missing part(s) {', '.join(f'part-{n}' for n in missing)} of {count}; transfer them too"
        )
    pieces: dict[str, list[tuple[dict, Path]]] = {}
    for folder, manifest in manifests:
        for entry in manifest["files"]:
            stored = folder / entry["stored_as"]
            if not stored.is_file() or sha256(stored) != entry["piece_sha256"]:
                raise BundleError(
                    f"{stored} is missing or damaged (sha256 differs from {folder / MANIFEST}); "
                    "transfer that part again"
                )
            pieces.setdefault(entry["path"], []).append((entry, stored))
    out = []
    for path, found in sorted(pieces.items()):
        found.sort(key=lambda item: item[0]["piece"])
        target = into / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as joined:
            for _entry, stored in found:
                with open(stored, "rb") as src:
                    shutil.copyfileobj(src, joined, 4 * MiB)
        expected = found[0][0]
        if sha256(target) != expected["file_sha256"]:
            target.unlink()
            raise BundleError(f"{path}: the joined file does not match its sha256; transfer its parts again")
        out.append(target)
    return out


# ---- prepare: stage the three kinds of inputs, then pack ----------------------------------------
def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    if subprocess.run(command, cwd=REPO_ROOT).returncode != 0:
        raise BundleError(f"failed: {' '.join(command)}")


def stage_dataset(spec: str, data_dir: Path) -> Path:
    """A local file as it is, or a hub dataset saved as one parquet file (needs network here)."""
    source = Path(spec).expanduser()
    if source.is_file():
        target = data_dir / source.name
        shutil.copyfile(source, target)
        return target
    from datasets import load_dataset  # the train extra; only for hub ids

    target = data_dir / (spec.replace("/", "--") + ".parquet")
    load_dataset(spec, split="train").to_parquet(str(target))
    return target


def prepare(
    dest: Path,
    python: str,
    cuda: str | None,
    dataset: str | None,
    wheels: bool,
    wheels_from: Path | None,
    count: int,
    part_size: int,
) -> list[Path]:
    dest = dest.resolve()  # the steps run from the repo root
    staging = dest / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "data").mkdir(parents=True)
    if wheels_from is not None:
        shutil.copytree(wheels_from, staging / "wheels")
    elif wheels:
        run(["bash", "training/gpu/download_wheels.sh", str(staging / "wheels"), python])
        if cuda:
            run([sys.executable, "training/gpu/slim_wheels.py", str(staging / "wheels"), "--cuda", cuda])
    run([sys.executable, "-m", "training.cli", "save-tokenizer", str(staging / "tokenizer")])
    run(
        [
            sys.executable,
            "-m",
            "training.data.synthetic",
            str(staging / "data" / "finetome-like.jsonl"),
            "--count",
            str(count),
        ]
    )
    if dataset:
        print(f"dataset {dataset} → {stage_dataset(dataset, staging / 'data')}")
    parts = pack(staging, dest / "parts", part_size)
    shutil.rmtree(staging)
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("prepare", help="stage wheels, tokenizer and data, and pack them into parts")
    make.add_argument("dest", type=Path)
    make.add_argument("--python", default="3.12", help="the GPU host's Python (for the wheels)")
    make.add_argument(
        "--cuda", default="130", help="keep only this CUDA's bitsandbytes library ('' keeps all)"
    )
    make.add_argument("--dataset", help="also a dataset: a local file, or a hub id saved as parquet")
    make.add_argument("--count", type=int, default=3000, help="synthetic conversations to write")
    make.add_argument("--no-wheels", dest="wheels", action="store_false", help="leave the wheels out")
    make.add_argument("--wheels-from", type=Path, help="take wheels from this folder instead of downloading")
    make.add_argument(
        "--part-size", type=int, default=DEFAULT_PART_SIZE, help="bytes per part (default 60 MiB)"
    )
    split = commands.add_parser("pack", help="pack any folder into parts")
    split.add_argument("source", type=Path)
    split.add_argument("dest", type=Path)
    split.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE)
    join = commands.add_parser("unpack", help="check and join parts (on the GPU host)")
    join.add_argument("parts", type=Path, nargs="+")
    join.add_argument("--into", type=Path, required=True)
    options = parser.parse_args(argv)
    try:
        if options.command == "unpack":
            files = unpack(options.parts, options.into)
            print(f"{len(files)} files in {options.into}")
            return 0
        if options.command == "pack":
            parts = pack(options.source, options.dest, options.part_size)
        else:
            parts = prepare(
                options.dest,
                options.python,
                options.cuda or None,
                options.dataset,
                options.wheels,
                options.wheels_from,
                options.count,
                options.part_size,
            )
    except BundleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for folder in parts:
        print(f"{folder}  {part_bytes(folder) / MiB:.1f} MiB")
    print(
        f"{len(parts)} part(s); on the GPU host: python3 training/gpu/bundle.py unpack "
        f"{parts[0].parent}/part-* --into .gpu"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
