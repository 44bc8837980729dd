"""Held-out loss and perplexity on assistant tokens, computed by llama.cpp from the GGUF itself.

What is scored matches the trainer's loss mask (training/chat_format.py): the reply text, its
end-of-turn token and the newline after it; system/user turns and the assistant header are context
only. The text is tokenized segment by segment (context, reply, context, ...) so the mask is exact
by construction; every segment boundary sits at ChatML markup, where whole-text tokenization splits
anyway. `score_tokens` gives the token ids and mask, so other implementations (the transformers
cross-check in tests/test_eval_perplexity.py) can score the very same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.conversations import Conversation
from training.evaluate.errors import EvalError


@dataclass
class Perplexity:
    loss: float  # mean negative log-likelihood per scored token (nats), like the trainer's eval_loss
    perplexity: float  # exp(loss)
    tokens: int  # assistant tokens scored
    conversations: int
    truncated: int  # conversations cut at the context window


class ChatTemplate:
    """The GGUF's own chat template (as the bot renders it), with or without a generation prompt."""

    def __init__(self, llm) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from core.engines.llama import FALLBACK_TEMPLATE

        model = llm._model
        template = llm.metadata.get("tokenizer.chat_template") or FALLBACK_TEMPLATE
        bos, eos = model.token_bos(), model.token_eos()
        texts = {
            "bos_token": model.token_get_text(bos) if bos >= 0 else "",
            "eos_token": model.token_get_text(eos) if eos >= 0 else "",
        }
        self._with_prompt = Jinja2ChatFormatter(template=template, add_generation_prompt=True, **texts)
        self._without = Jinja2ChatFormatter(template=template, add_generation_prompt=False, **texts)

    def render(self, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
        formatter = self._with_prompt if generation_prompt else self._without
        return formatter(messages=list(messages)).prompt


def segments(template: ChatTemplate, messages: Conversation) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant_reply) pieces, in order."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = template.render(messages[:index], generation_prompt=True)
        through = template.render(messages[: index + 1], generation_prompt=False)
        if not (before.startswith(done) and through.startswith(before) and len(through) > len(before)):
            raise EvalError(
                "the model's chat template rewrites earlier turns; cannot locate assistant replies"
            )
        pieces += [(before[len(done) :], False), (through[len(before) :], True)]
        done = through
    return [(text, scored) for text, scored in pieces if text]


def score_tokens(llm, template: ChatTemplate, messages: Conversation) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, per token, whether its prediction is scored."""
    tokens: list[int] = []
    mask: list[bool] = []
    for text, scored in segments(template, messages):
        ids = llm._model.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        tokens += ids
        mask += [scored] * len(ids)
    return tokens, mask


def token_nll(logits: np.ndarray, tokens: Sequence[int], mask: Sequence[bool]) -> np.ndarray:
    """-log p(token[i] | tokens[:i]) for every scored i ≥ 1; `logits[j]` is the prediction after token j."""
    targets = np.array([i for i in range(1, len(tokens)) if mask[i]], dtype=np.int64)
    if targets.size == 0:
        return np.zeros(0)
    rows = np.asarray(logits[targets - 1], dtype=np.float64)
    peak = rows.max(axis=1, keepdims=True)
    log_norm = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
    chosen = rows[np.arange(len(targets)), np.asarray(tokens)[targets]]
    return log_norm - chosen


def summarise(nll_sum: float, count: int, conversations: int, truncated: int) -> Perplexity:
    if count == 0:
        raise EvalError(
            "no assistant token was left to score (are the held-out replies longer than the context?)"
        )
    loss = nll_sum / count
    return Perplexity(
        loss=loss, perplexity=math.exp(loss), tokens=count, conversations=conversations, truncated=truncated
    )


def gguf_perplexity(
    path: Path, conversations: list[Conversation], *, threads: int, n_ctx: int = 2048, progress: bool = True
) -> Perplexity:
    """Score every held-out conversation with llama.cpp (all logits kept) and pool the token NLLs."""
    import llama_cpp
    from tqdm.auto import tqdm

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=512,
        n_ubatch=512,
        logits_all=True,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    try:
        n_ctx = llm.n_ctx()
        template = ChatTemplate(llm)
        nll_sum, count, truncated = 0.0, 0, 0
        for messages in tqdm(
            conversations, desc=f"perplexity {path.name}", disable=not progress, leave=False
        ):
            tokens, mask = score_tokens(llm, template, messages)
            if len(tokens) > n_ctx:
                tokens, mask, truncated = tokens[:n_ctx], mask[:n_ctx], truncated + 1
            llm.reset()
            llm.eval(tokens)
            nll = token_nll(llm.scores[: len(tokens)], tokens, mask)
            nll_sum += float(nll.sum())
            count += int(nll.size)
        return summarise(nll_sum, count, len(conversations), truncated)
    finally:
        llm.close()
