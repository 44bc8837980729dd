"""The two inputs besides the models: the fixed prompt set and the held-out conversations.

Both fail with a clear `EvalError` rather than producing a report of nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.conversations import Conversation, read_rows, resolve_source, standardize
from training.errors import DatasetError
from training.evaluate.errors import EvalError

DEFAULT_PROMPTS = Path(__file__).with_name("prompts.txt")
DEFAULT_HELDOUT = "builtin:heldout"  # the tiny preset's held-out split (training/data/heldout.jsonl)


def load_prompts(path: Path | None = None) -> list[str]:
    """Prompts from a .txt (one a line, # comments) or .jsonl ({"prompt": ...} or a JSON string) file."""
    path = Path(path) if path else DEFAULT_PROMPTS
    if not path.is_file():
        raise EvalError(f"prompt file not found: {path}")
    prompts: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.suffix.lower() == ".jsonl":
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise EvalError(f"{path}:{number}: not valid JSON: {error.msg}") from None
            line = item.get("prompt", "") if isinstance(item, dict) else item
            if not isinstance(line, str):
                raise EvalError(f"{path}:{number}: expected a string or an object with a 'prompt' string")
            line = line.strip()
            if not line:
                continue
        prompts.append(line)
    if not prompts:
        raise EvalError(f"the prompt set {path} is empty: put one prompt per line (# starts a comment)")
    return prompts


def load_heldout(spec: str | Path | None = None, limit: int | None = None) -> list[Conversation]:
    """Held-out conversations that have at least one assistant turn to score.

    Rows the trainer would reject (no assistant turn, unknown roles, ...) are skipped; a file left
    with none is an error, since perplexity on assistant tokens would be undefined.
    """
    spec = str(spec or DEFAULT_HELDOUT)
    source = resolve_source(spec)
    if not Path(source).expanduser().is_file():
        raise EvalError(
            f"held-out file not found: {source} (give a local .json/.jsonl/.parquet ShareGPT file)"
        )
    try:
        rows = read_rows(source)
    except DatasetError as error:
        raise EvalError(str(error)) from None
    conversations: list[Conversation] = []
    reasons: list[str] = []
    for index, row in enumerate(rows):
        try:
            conversations.append(standardize(row))
        except ValueError as error:
            reasons.append(f"row {index}: {error}")
        if limit and len(conversations) >= limit:
            break
    if not conversations:
        example = f" (e.g. {reasons[0]})" if reasons else ""
        raise EvalError(
            f"the held-out file {source} has no conversation with an assistant turn{example}; "
            "perplexity is measured on assistant replies (ShareGPT 'gpt' turns)"
        )
    return conversations
