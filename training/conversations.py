"""Load conversations from a file or the hub, check each row, and standardize the roles.

Accepts ShareGPT rows (`{"conversations": [{"from": "human", "value": ...}]}`, as in FineTome-100k)
and OpenAI-style rows (`{"messages": [{"role": "user", "content": ...}]}`). Output is always a list
of `[{"role": "system"|"user"|"assistant", "content": str}, ...]`, like Unsloth's
`standardize_sharegpt`, so the chat template does the rest.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.errors import BadRowError, DatasetError

BUILTIN_DIR = Path(__file__).parent / "data"
ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}
FILE_SUFFIXES = {".json", ".jsonl", ".parquet"}

Conversation = list[dict[str, str]]

# Why a row is not a conversation, by kind: counted per kind and reported, never a crash.
BAD_ROW_KINDS = {
    "unreadable": "unreadable (not JSON)",
    "not_a_conversation": "not a conversation",
    "missing_role": "missing role",
    "unknown_role": "unknown role",
    "empty_turn": "empty turn",
    "bad_order": "out of order or no reply",
    # found when tokenizing (training/chat_format.py: encode_all), after the model's tokenizer is loaded
    "too_long": "too long (no reply within max_seq_length)",
    "nothing_to_learn": "nothing to learn",
    # KTO/DPO rows (training/preference_data.py)
    "not_a_preference_row": "not a prompt + answer row",
    "wrong_format": "another method's row",
    "bad_label": "label not true/false",
    "same_answers": "chosen = rejected",
    "bad_token_ids": "token ids not a list of integers",
}


class BadRow(ValueError):
    """Why one row is not a conversation; `kind` is a key of BAD_ROW_KINDS."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class LoadedDataset:
    """Usable conversations plus what was skipped, counted by kind, and why (first few reasons kept)."""

    source: str
    conversations: list[Conversation]
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    bad_rows: Counter = field(default_factory=Counter)  # kind -> rows

    def summary(self) -> str:
        """`3 bad row(s) skipped in X: 2 unknown role, 1 empty turn; e.g. row 4: ...`"""
        return describe_bad_rows(self.bad_rows, self.source, self.reasons[:1])


def describe_bad_rows(
    counts: Counter | dict[str, int], source: str, examples: list[str] | None = None
) -> str:
    total = sum(counts.values())
    kinds = ", ".join(
        f"{n} {BAD_ROW_KINDS.get(kind, kind)}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1])
    )
    example = f"; e.g. {examples[0]}" if examples else ""
    return f"{total} bad row(s) skipped in {source}: {kinds}{example}"


def resolve_source(spec: str) -> str:
    """`builtin:train` → the shipped sample file; anything else unchanged."""
    if spec.startswith("builtin:"):
        return str(BUILTIN_DIR / f"{spec.split(':', 1)[1]}.jsonl")
    return spec


def looks_like_path(spec: str) -> bool:
    """A hub id is `owner/name`; a path has a file suffix, starts with . / ~, or exists."""
    path = Path(spec).expanduser()
    return path.exists() or path.suffix.lower() in FILE_SUFFIXES or spec.startswith((".", "/", "~"))


def read_rows(spec: str) -> list[Any]:
    """Raw rows from a JSON/JSONL/Parquet file or a hub dataset id."""
    source = resolve_source(spec)
    if looks_like_path(source):
        return _read_file(Path(source).expanduser())
    return _read_hub(source)


def _read_file(path: Path) -> list[Any]:
    if not path.is_file():
        raise DatasetError(f"dataset not found: {path} (give a .json, .jsonl or .parquet file, or a hub id)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DatasetError(f"cannot read dataset {path}: {error}") from error
    stripped = text.lstrip()
    if suffix == ".json" or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}: not valid JSON: {error}") from error
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of conversations")
        return data
    rows: list[Any] = []
    for number, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            rows.append(_Unparsable(f"line {number + 1} is not valid JSON: {error.msg}"))
    return rows


@dataclass
class _Unparsable:
    reason: str


def _read_hub(hub_id: str) -> list[Any]:
    try:
        from datasets import load_dataset

        return list(load_dataset(hub_id, split="train"))
    except Exception as error:  # offline, unknown id, gated...: one clear message
        raise DatasetError(
            f"could not load hub dataset {hub_id!r}: {type(error).__name__}: {error}. "
            "Without network access, pass a local .json/.jsonl/.parquet file with --dataset."
        ) from error


def standardize(row: Any) -> Conversation:
    """One row → a conversation, or ValueError saying why the row is not one."""
    if isinstance(row, _Unparsable):
        raise BadRow("unreadable", row.reason)
    if not isinstance(row, dict):
        raise BadRow("not_a_conversation", f"expected an object, got {type(row).__name__}")
    turns = row.get("conversations", row.get("messages"))
    if turns is None:
        raise BadRow("not_a_conversation", "no 'conversations' (ShareGPT) or 'messages' field")
    if not isinstance(turns, list) or not turns:
        raise BadRow("not_a_conversation", "the conversation must be a non-empty list of turns")
    out: Conversation = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRow("not_a_conversation", f"turn {index} is not an object")
        who = turn.get("from") if turn.get("from") is not None else turn.get("role")
        text = turn.get("value") if turn.get("value") is not None else turn.get("content")
        if who is None:
            raise BadRow("missing_role", f"turn {index} has no 'from' (or 'role')")
        role = ROLE_NAMES.get(str(who).lower())
        if role is None:
            raise BadRow("unknown_role", f"turn {index} has unknown role {who!r}")
        if not isinstance(text, str) or not text.strip():
            raise BadRow("empty_turn", f"turn {index} has no text")
        if role == "system" and index != 0:
            raise BadRow("bad_order", f"turn {index}: a system turn may only come first")
        out.append({"role": role, "content": text})
    if not any(turn["role"] == "assistant" for turn in out):
        raise BadRow("bad_order", "no assistant turn to learn from")
    if out[0]["role"] == "assistant" or (
        out[0]["role"] == "system" and out[1:2] and out[1]["role"] != "user"
    ):
        raise BadRow(
            "bad_order", "the conversation must start with a user turn (after an optional system turn)"
        )
    return out


def load_conversations(spec: str, on_bad_row: str = "skip", limit: int | None = None) -> LoadedDataset:
    """Read and check every row; skip or stop at a bad one, as configured."""
    source = resolve_source(spec)
    loaded = LoadedDataset(source=source, conversations=[])
    for index, row in enumerate(read_rows(spec)):
        try:
            loaded.conversations.append(standardize(row))
        except BadRow as error:
            if on_bad_row == "error":
                raise BadRowError(index, str(error), source) from None
            loaded.skipped += 1
            loaded.bad_rows[error.kind] += 1
            if len(loaded.reasons) < 5:
                loaded.reasons.append(f"row {index}: {error}")
        if limit and len(loaded.conversations) >= limit:
            break
    if not loaded.conversations:
        detail = f" ({loaded.summary()})" if loaded.reasons else ""
        raise DatasetError(f"no usable conversation in {source}{detail}")
    return loaded


def split_heldout(
    conversations: list[Conversation], fraction: float, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """Deterministic train/held-out split when no separate eval file is given."""
    if fraction <= 0 or len(conversations) < 2:
        return conversations, []
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(conversations) * fraction))
    held = set(order[:n_eval])
    return (
        [c for i, c in enumerate(conversations) if i not in held],
        [c for i, c in enumerate(conversations) if i in held],
    )
