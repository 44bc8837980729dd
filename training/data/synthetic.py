"""Synthetic ShareGPT conversations whose lengths are spread like FineTome-100k's.

Log-normal total lengths (median ~420 tokens, ~15% over 1024), 1-3 turns, words from a small
vocabulary: no hub needed, and padding waste shows as it would on the real data. Used by
`lorabot bench train` and by the offline GPU run (training/gpu/baseline-random-1b.toml reads
the file this writes):

    python -m training.data.synthetic /tmp/lorabot-gpu/finetome-like.jsonl [--count 3000]
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

WORDS = (
    "the model learns from examples and each answer should be clear short and correct when a user asks "
    "about code data science history travel cooking maths or writing we explain the idea step by step "
    "then give an example because people remember concrete cases better than abstract rules"
).split()


def synthetic_conversations(count: int, seed: int = 3407) -> list[dict]:
    """ShareGPT rows with FineTome-like total lengths (tokens ≈ 1.3 x words)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        total_words = int(min(1800, max(24, rng.lognormvariate(math.log(400), 0.75))))
        turns = rng.choice([1, 1, 1, 2, 2, 3])
        conv = []
        for _ in range(turns):
            share = total_words // turns
            user = max(4, int(share * rng.uniform(0.1, 0.3)))
            conv.append({"from": "human", "value": " ".join(rng.choices(WORDS, k=user)) + "?"})
            conv.append({"from": "gpt", "value": " ".join(rng.choices(WORDS, k=max(4, share - user))) + "."})
        rows.append({"conversations": conv})
    return rows


def write_jsonl(path: Path, count: int, seed: int = 3407) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "\n".join(json.dumps(r) for r in synthetic_conversations(count, seed)) + "\n", encoding="utf-8"
    )
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write FineTome-like synthetic conversations as JSONL.")
    parser.add_argument("output", type=Path)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=3407)
    options = parser.parse_args()
    print(write_jsonl(options.output, options.count, options.seed))
