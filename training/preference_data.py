"""KTO/DPO rows: read, check each one, and say clearly when a whole file is wrong for the run.

Rows are what `lorabot feedback export` writes (core/feedback_export.py), in trl's conversational
shapes: KTO `{"prompt": [messages], "completion": [assistant], "label": bool}`, DPO
`{"prompt": [messages], "chosen": [assistant], "rejected": [assistant]}`. Pre-tokenized rows in
trl's processed shapes (`prompt_ids` + `completion_ids` + `label`, `prompt_ids` + `chosen_ids` +
`rejected_ids`) are accepted too, once their ids are shown to belong to the base's tokenizer
(`check_token_ids`). Optional `model` / `model_file` fields (the registered name and the file
identity of the model that wrote the answers) are compared with `--from-model` (a warning).

A bad row is skipped and counted by kind (BAD_ROW_KINDS, as for SFT); a file that cannot train
this method at all (empty, another method's rows, one-sided KTO labels, another tokenizer's ids)
is a DatasetError saying what to do.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from training.conversations import ROLE_NAMES, BadRow, describe_bad_rows, read_rows, resolve_source
from training.errors import BadRowError, DatasetError

Message = dict[str, str]

# the columns of each shape, text and pre-tokenized; the answer columns of each method
TEXT_SHAPES = {"kto": ("prompt", "completion", "label"), "dpo": ("prompt", "chosen", "rejected")}
TOKEN_SHAPES = {
    "kto": ("prompt_ids", "completion_ids", "label"),
    "dpo": ("prompt_ids", "chosen_ids", "rejected_ids"),
}
ANSWERS = {"kto": ("completion",), "dpo": ("chosen", "rejected")}
SHAPE_NAMES = {
    "kto": 'KTO rows ({"prompt", "completion", "label"})',
    "dpo": 'DPO pairs ({"prompt", "chosen", "rejected"})',
    "sft": 'SFT conversations ({"messages"} or {"conversations"})',
}
EXPORT_HINT = "lorabot feedback export --format {method} --out FILE.jsonl"


def row_shape(row: Any) -> tuple[str, bool] | None:
    """(method, pre-tokenized) this row is shaped for, or None when it is no known shape."""
    if not isinstance(row, dict):
        return None
    keys = set(row)
    if {"chosen_ids", "rejected_ids"} <= keys:
        return "dpo", True
    if "completion_ids" in keys:
        return "kto", True
    if "input_ids" in keys:
        return "sft", True
    if {"chosen", "rejected"} <= keys:
        return "dpo", False
    if "completion" in keys:
        return "kto", False
    if "messages" in keys or "conversations" in keys:
        return "sft", False
    return None


def sniff_format(rows: list[Any]) -> tuple[str, bool] | None:
    """The shape most rows have (None when no row has a known one)."""
    shapes = Counter(shape for shape in map(row_shape, rows) if shape is not None)
    return shapes.most_common(1)[0][0] if shapes else None


def wrong_format_message(source: str, found: str, method: str) -> str:
    """`X holds DPO pairs (...), not KTO rows (...): train them with --method dpo, or ...`."""
    return (
        f"{source} holds {SHAPE_NAMES[found]}, not {SHAPE_NAMES[method]}: train them with --method {found}, "
        f"or export the ratings for {method.upper()}: {EXPORT_HINT.format(method=method)}"
    )


@dataclass
class PreferenceData:
    """The usable rows of one file, for one method, and what was left out."""

    source: str
    method: str
    rows: list[dict[str, Any]]  # trl's shape: conversational, or pre-tokenized (`tokenized`)
    tokenized: bool = False
    bad_rows: Counter = field(default_factory=Counter)  # kind -> rows (BAD_ROW_KINDS)
    reasons: list[str] = field(default_factory=list)
    models: Counter = field(default_factory=Counter)  # rows' `model` field, when they have one
    model_files: Counter = field(default_factory=Counter)  # rows' `model_file` field

    @property
    def skipped(self) -> int:
        return sum(self.bad_rows.values())

    def summary(self) -> str:
        return describe_bad_rows(self.bad_rows, self.source, self.reasons[:1])

    def labels(self) -> Counter:
        """KTO: {True: 👍 rows, False: 👎 rows}."""
        return Counter(bool(row["label"]) for row in self.rows) if self.method == "kto" else Counter()


# -- one row ------------------------------------------------------------------------------------------
def _messages(turns: Any, what: str) -> list[Message]:
    if isinstance(turns, str):
        raise BadRow(
            "not_a_preference_row",
            f"{what} is a string; lorabot trains conversational rows (a list of messages), "
            "as lorabot feedback export writes them",
        )
    if not isinstance(turns, list) or not turns:
        raise BadRow("not_a_preference_row", f"{what} must be a non-empty list of messages")
    out: list[Message] = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRow("not_a_preference_row", f"{what} turn {index} is not an object")
        who = turn.get("role") if turn.get("role") is not None else turn.get("from")
        text = turn.get("content") if turn.get("content") is not None else turn.get("value")
        if who is None:
            raise BadRow("missing_role", f"{what} turn {index} has no 'role'")
        role = ROLE_NAMES.get(str(who).lower())
        if role is None:
            raise BadRow("unknown_role", f"{what} turn {index} has unknown role {who!r}")
        if not isinstance(text, str) or not text.strip():
            raise BadRow("empty_turn", f"{what} turn {index} has no text")
        out.append({"role": role, "content": text})
    return out


def _prompt(turns: Any) -> list[Message]:
    prompt = _messages(turns, "prompt")
    if any(turn["role"] == "system" for turn in prompt[1:]):
        raise BadRow("bad_order", "prompt: a system turn may only come first")
    if prompt[-1]["role"] != "user":
        raise BadRow("bad_order", "the prompt must end with the user's question")
    return prompt


def _answer(turns: Any, what: str) -> list[Message]:
    answer = _messages(turns, what)
    if any(turn["role"] != "assistant" for turn in answer):
        raise BadRow("bad_order", f"{what} must hold assistant turns only")
    return answer


def _ids(value: Any, what: str) -> list[int]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    ):
        raise BadRow("bad_token_ids", f"{what} is not a non-empty list of token ids")
    return value


def _label(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRow("bad_label", f"label must be true or false, got {value!r}")
    return value


def parse_row(row: Any, method: str, tokenized: bool) -> dict[str, Any]:
    """One row in trl's shape for `method`, or BadRow saying why it is not one."""
    from training.conversations import _Unparsable

    if isinstance(row, _Unparsable):
        raise BadRow("unreadable", row.reason)
    shape = row_shape(row)
    if shape is None:
        columns = ", ".join(TOKEN_SHAPES[method] if tokenized else TEXT_SHAPES[method])
        raise BadRow("not_a_preference_row", f"expected an object with {columns}")
    if shape != (method, tokenized):
        found = SHAPE_NAMES[shape[0]] + (" (pre-tokenized)" if shape[1] else "")
        raise BadRow("wrong_format", f"a row of {found} in a {method.upper()} dataset")
    if tokenized:
        out: dict[str, Any] = {"prompt_ids": _ids(row["prompt_ids"], "prompt_ids")}
        for column in TOKEN_SHAPES[method][1:]:
            out[column] = _label(row[column]) if column == "label" else _ids(row.get(column), column)
        if method == "dpo" and out["chosen_ids"] == out["rejected_ids"]:
            raise BadRow("same_answers", "chosen_ids and rejected_ids are the same")
        return out
    out = {"prompt": _prompt(row.get("prompt"))}
    for column in ANSWERS[method]:
        out[column] = _answer(row.get(column), column)
    if method == "kto":
        if "label" not in row:
            raise BadRow("bad_label", "no 'label' (true for 👍, false for 👎)")
        out["label"] = _label(row["label"])
    elif [t["content"].strip() for t in out["chosen"]] == [t["content"].strip() for t in out["rejected"]]:
        raise BadRow("same_answers", "chosen and rejected are the same answer")
    return out


# -- one file ------------------------------------------------------------------------------------------
def load_preference_rows(
    spec: str, method: str, on_bad_row: str = "skip", limit: int | None = None
) -> PreferenceData:
    """Every usable row of `spec` for `method` ("kto" | "dpo"); the whole-file errors first."""
    if not spec:
        raise DatasetError(
            f"a {method.upper()} run needs --dataset FILE.jsonl; "
            f"{EXPORT_HINT.format(method=method)} writes one from the chats' ratings"
        )
    source = resolve_source(spec)
    raw = read_rows(spec)
    if not raw:
        raise DatasetError(
            f"{source} is empty: no rows to train on ({EXPORT_HINT.format(method=method)} writes them once "
            "the chats have ratings)"
        )
    shape = sniff_format(raw)
    if shape is not None and shape[0] != method:
        raise DatasetError(wrong_format_message(source, shape[0], method))
    tokenized = bool(shape and shape[1])
    data = PreferenceData(source=source, method=method, rows=[], tokenized=tokenized)
    for index, row in enumerate(raw):
        try:
            parsed = parse_row(row, method, tokenized)
        except BadRow as error:
            if on_bad_row == "error":
                raise BadRowError(index, str(error), source) from None
            data.bad_rows[error.kind] += 1
            if len(data.reasons) < 5:
                data.reasons.append(f"row {index}: {error}")
            continue
        for key, counter in (("model", data.models), ("model_file", data.model_files)):
            if isinstance(row.get(key), str) and row[key]:
                counter[row[key]] += 1
        data.rows.append(parsed)
        if limit and len(data.rows) >= limit:
            break
    if not data.rows:
        raise DatasetError(f"no usable {method.upper()} row in {source} ({data.summary()})")
    if method == "kto":
        check_both_labels(data.labels(), source)
    return data


def check_both_labels(labels: Counter, source: str) -> None:
    """KTO learns from the contrast between 👍 and 👎 answers: a one-sided file cannot train."""
    for label, name, other, advice in (
        (True, "👍 (label true)", "👎", "or train the liked answers with --method sft (--format sft)"),
        (False, "👎 (label false)", "👍", "a file of dislikes alone only teaches what not to say"),
    ):
        if labels[label] and not labels[not label]:
            raise DatasetError(
                f"all {labels[label]} usable rows of {source} are {name}: KTO needs both 👍 and 👎 answers "
                f"(it learns from their contrast); collect some {other} ratings first, {advice}"
            )


def split_preference_rows(
    rows: list[dict[str, Any]], method: str, fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out), shuffled with `seed`; KTO's split is per label, so both sides keep both
    labels. Shuffled because trl's KTO samples rows in order (its KL term pairs each row with its
    batch neighbours) and an export lists them by conversation."""
    rng = random.Random(seed)
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["label"] if method == "kto" else None, []).append(row)
    train: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    for group in groups.values():
        group = list(group)
        rng.shuffle(group)
        n_held = int(len(group) * fraction) if fraction > 0 else 0
        if fraction > 0 and len(group) >= 4:
            n_held = max(1, n_held)
        held += group[:n_held]
        train += group[n_held:]
    rng.shuffle(train)
    rng.shuffle(held)
    return train, held


def kto_weights(labels: Counter, desirable: float | None, undesirable: float | None) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight). Given ones are kept; by default the minority label's
    weight is raised so that desirable_weight * n👍 / (undesirable_weight * n👎) sits mid-way in
    [1, 4/3], the range trl's KTO docs advise (Eq. 8 of the KTO paper)."""
    if desirable is not None or undesirable is not None:
        return desirable or 1.0, undesirable or 1.0
    up, down = max(labels[True], 1), max(labels[False], 1)
    if up > down:
        return 1.0, round(up / down / 1.15, 2)
    if down > up:
        return round(down / up * 1.15, 2), 1.0
    return 1.0, 1.0
