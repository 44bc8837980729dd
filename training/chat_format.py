"""Chat template + tokenization with loss on assistant turns only.

Both backends get the same `input_ids`/`labels` rows from here, so they optimise the same loss.
Assistant spans are found by rendering the conversation prefix by prefix with the template itself
(what precedes reply i is `template(messages[:i], add_generation_prompt=True)`), which works for
any template and for packed rows. It matches Unsloth's `train_on_responses_only` (2026.10): the
reply text and its end-of-turn token are learned; headers, system and user turns, and the newline
after the end-of-turn token are not.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from training.errors import ConfigError

IGNORE_INDEX = -100

# Llama 3.1's template, as Unsloth's get_chat_template("llama-3.1") writes it (date header included).
LLAMA_31_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] | trim %}"
    "{% set messages = messages[1:] %}{% else %}{% set system_message = '' %}{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{ 'Cutting Knowledge Date: December 2023\\nToday Date: 26 July 2024\\n\\n' }}"
    "{{ system_message }}{{ '<|eot_id|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TEMPLATES = {"llama-3.1": LLAMA_31_TEMPLATE, "chatml": CHATML_TEMPLATE}


def set_chat_template(tokenizer: Any, name: str) -> None:
    """'model' keeps the base model's own template; other names install a known one."""
    if name == "model":
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                'the base model has no chat template; set chat_template = "chatml" or "llama-3.1"'
            )
        return
    if name not in TEMPLATES:
        raise ConfigError(f"unknown chat_template {name!r}; use model, {', '.join(TEMPLATES)}")
    tokenizer.chat_template = TEMPLATES[name]


def render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]], text: str) -> list[tuple[int, int]]:
    """Character ranges of `text` that hold assistant replies (with their end-of-turn markup)."""
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:index], generation_prompt=True)
        through = render(tokenizer, messages[: index + 1])
        if not (text.startswith(before) and text.startswith(through) and len(through) > len(before)):
            # A template that rewrites earlier turns (rare): fall back to finding the reply text.
            start = text.find(message["content"].strip(), spans[-1][1] if spans else 0)
            if start < 0:
                raise ConfigError("the chat template changes earlier turns; cannot find assistant replies")
            spans.append((start, start + len(message["content"].strip())))
            continue
        # the reply and its end-of-turn token; not the whitespace the template puts after it
        spans.append((len(before), len(through.rstrip())))
    return spans


def encode(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> dict[str, Any]:
    """Token ids and labels (-100 outside assistant replies), truncated to `max_length`;
    `length` is the untruncated token count."""
    text = render(tokenizer, messages)
    spans = assistant_spans(tokenizer, messages, text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    length = len(encoded["input_ids"])
    ids = encoded["input_ids"][:max_length]
    labels = []
    span_index = 0
    # ids are cut to max_length; the offsets of the cut-off tokens are not needed
    for token_id, (start, _end) in zip(ids, encoded["offset_mapping"], strict=False):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        inside = span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]
        labels.append(token_id if inside else IGNORE_INDEX)
    return {"input_ids": ids, "labels": labels, "length": length}


def encode_all(
    tokenizer: Any, conversations: list[list[dict[str, str]]], max_length: int, desc: str = "tokenizing"
) -> tuple[Any, Counter]:
    """(a `datasets.Dataset` of encoded rows, what happened to over-long ones).

    A conversation longer than `max_length` tokens is cut there, as the notebook's trainer does,
    and counted as `truncated`; cut before any reply token it has nothing to learn, so it is
    dropped and counted as `too_long`."""
    from datasets import Dataset
    from tqdm.auto import tqdm

    rows, counts = [], Counter()
    for messages in tqdm(conversations, desc=desc, leave=False, mininterval=1.0):
        row = encode(tokenizer, messages, max_length)
        too_long = row.pop("length") > max_length
        if any(label != IGNORE_INDEX for label in row["labels"]):
            rows.append(row)
            counts["truncated"] += too_long
        else:
            counts["too_long" if too_long else "nothing_to_learn"] += 1
    return Dataset.from_list(rows), +counts
