"""Small stand-ins for the seed notebook's two Hub inputs, made offline by the tests themselves.

- `mlabonne/FineTome-100k`: a parquet file shaped like the real one (`conversations`: a list of
  `{from, value}` structs in ShareGPT form, plus `source` and `score`), at the path the real repo
  uses (`data/train-00000-of-00001.parquet`), with good rows from the shipped sample data and
  one malformed row of each kind lorabot counts.
- `unsloth/Llama-3.2-1B-Instruct`: a tiny `LlamaForCausalLM` (random weights, safetensors) with a
  real tokenizer: the embedded SmolLM2's, plus Llama 3's special tokens (`<|begin_of_text|>`,
  `<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>`, ...) and a Llama 3.1 chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

FINETOME_REPO = "mlabonne/FineTome-100k"
FINETOME_FILE = "data/train-00000-of-00001.parquet"
LLAMA_REPO = "unsloth/Llama-3.2-1B-Instruct"
LLAMA_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
]
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 60)  # ~540 tokens

# One malformed row per kind, as they show up in real ShareGPT dumps. Parquet gives every turn
# both keys, so a missing one is a null.
BAD_ROWS = {
    "missing_role": [{"from": None, "value": "Who am I?"}, {"from": "gpt", "value": "Nobody knows."}],
    "empty_turn": [{"from": "human", "value": "Say nothing."}, {"from": "gpt", "value": "   "}],
    "unknown_role": [{"from": "alien", "value": "Take me to your leader."}, {"from": "gpt", "value": "No."}],
    "bad_order": [{"from": "gpt", "value": "I speak first."}, {"from": "human", "value": "Why?"}],
}
# Longer than max_seq_length: the reply comes after the cut (nothing to learn) or before it (kept, cut).
TOO_LONG = [{"from": "human", "value": LONG}, {"from": "gpt", "value": "Too late."}]
TRUNCATED = [{"from": "human", "value": "Describe the fox."}, {"from": "gpt", "value": LONG}]


def good_rows(count: int) -> list[list[dict]]:
    rows = []
    sample = Path(__file__).resolve().parents[2] / "training" / "data" / "train.jsonl"
    for line in sample.read_text(encoding="utf-8").splitlines()[:count]:
        rows.append([{"from": t["from"], "value": t["value"]} for t in json.loads(line)["conversations"]])
    return rows


def finetome_table(conversations: list[list[dict]]):
    """A pyarrow table with FineTome-100k's columns and types."""
    import pyarrow as pa

    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    return pa.table(
        {
            "conversations": pa.array(conversations, type=pa.list_(turn)),
            "source": pa.array(["infini-instruct-top-500k"] * len(conversations)),
            "score": pa.array([5.2 - 0.01 * i for i in range(len(conversations))], type=pa.float64()),
        }
    )


def write_finetome(
    path: Path, good: int = 40, bad: dict[str, list] | None = None, long_rows: bool = True
) -> Path:
    """Good rows, then the given malformed ones (default: one of each kind), then the two long ones."""
    import pyarrow.parquet as pq

    rows = good_rows(good) + list((BAD_ROWS if bad is None else bad).values())
    if long_rows:
        rows += [TOO_LONG, TRUNCATED]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(finetome_table(rows), path)
    return path


FINETOME_CARD = """---
language:
- en
license: mit
size_categories:
- n<1K
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
# FineTome (a test's stand-in)
"""


def llama_tokenizer():
    """The embedded SmolLM2 tokenizer turned into a Llama-3-style one (special tokens, template)."""
    from transformers import AutoTokenizer

    from training.base_model import resolve_base
    from training.chat_format import LLAMA_31_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(resolve_base("embedded"))
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA_SPECIAL_TOKENS})
    tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tokenizer.pad_token = "<|finetune_right_pad_id|>"
    tokenizer.chat_template = LLAMA_31_TEMPLATE
    return tokenizer


def write_tiny_llama(folder: Path) -> Path:
    """A Llama-architecture checkpoint small enough to train on a CPU in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.base_model import LLAMA_COMMON, LLAMA_SHAPES

    tokenizer = llama_tokenizer()
    shape = {**LLAMA_SHAPES["llama-test"], "vocab_size": len(tokenizer)}
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlamaConfig(**{**LLAMA_COMMON, **shape, **ids})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def repo_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
