"""Pairwise judge: which of two answers to a prompt is better, asked twice with positions swapped.

LLM judges favour one position (often the first). Asking (X, Y) and then (Y, X) and counting a
win only when both orders agree cancels that bias: an order-driven judge produces ties, not wins.

Judges: `LocalJudge` (a registered GGUF; it reads the next-token logits of "A" and "B", so even a
small model always gives a parseable verdict) and `EndpointJudge` (an OpenAI-compatible
`/chat/completions` server, e.g. llama.cpp server, vLLM, Ollama or a hosted API).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from training.evaluate.errors import EvalError

Verdict = Literal["A", "B", "tie"]
MAX_ANSWER_CHARS = 1500

JUDGE_PROMPT = """You are judging two answers to the same question. Pick the answer that is more helpful, \
correct and clear.

Question:
{prompt}

Answer A:
{first}

Answer B:
{second}

Reply with a single letter: A or B."""


def judge_message(prompt: str, first: str, second: str) -> str:
    clip = lambda text: (text.strip() or "(no answer)")[:MAX_ANSWER_CHARS]  # noqa: E731
    return JUDGE_PROMPT.format(prompt=prompt.strip(), first=clip(first), second=clip(second))


class Judge(Protocol):
    name: str

    def choose(self, prompt: str, first: str, second: str) -> Verdict:
        """'A' if `first` is better, 'B' if `second` is, 'tie' if it cannot tell."""


@dataclass
class PairResult:
    """How `model` fared against `other` over n prompts, both orders asked per prompt."""

    judge: str
    model: str
    other: str
    wins: int
    losses: int
    ties: int  # including prompts where the two orders disagreed
    first_position_picks: int  # verdicts that chose whatever stood first: order bias, out of 2n
    decisions: list[dict[str, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float:
        """Wins plus half the ties, over prompts judged."""
        return (self.wins + 0.5 * self.ties) / self.n if self.n else 0.0


def compare(
    judge: Judge,
    prompts: Sequence[str],
    answers: Sequence[str],
    other_answers: Sequence[str],
    model: str,
    other: str,
    progress: bool = True,
) -> PairResult:
    """Judge `model`'s answers against `other`'s, each prompt in both orders."""
    from tqdm.auto import tqdm

    result = PairResult(
        judge=judge.name, model=model, other=other, wins=0, losses=0, ties=0, first_position_picks=0
    )
    rows = zip(prompts, answers, other_answers, strict=True)
    for prompt, mine, theirs in tqdm(
        list(rows), desc=f"judge {model} vs {other}", disable=not progress, leave=False
    ):
        straight = judge.choose(prompt, mine, theirs)  # model's answer shown first
        swapped = judge.choose(prompt, theirs, mine)  # ...then second
        result.first_position_picks += (straight == "A") + (swapped == "A")
        picks = {"A": model, "B": other}.get(straight, "tie"), {"A": other, "B": model}.get(swapped, "tie")
        if picks == (model, model):
            result.wins += 1
            outcome = model
        elif picks == (other, other):
            result.losses += 1
            outcome = other
        else:
            result.ties += 1
            outcome = "tie"
        result.decisions.append(
            {"prompt": prompt, "straight": straight, "swapped": swapped, "winner": outcome}
        )
    return result


class LocalJudge:
    """A registered GGUF model as the judge: compares its next-token logits for 'A' and 'B'."""

    def __init__(self, name: str, path: Path, *, threads: int, n_ctx: int = 4096) -> None:
        import llama_cpp

        from training.evaluate.perplexity import ChatTemplate

        self.name = name
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, verbose=False)
        self.template = ChatTemplate(self.llm)
        self.choices = [self._first_token(letter) for letter in ("A", "B")]

    def _first_token(self, text: str) -> int:
        return self.llm._model.tokenize(text.encode(), add_bos=False, special=False)[0]

    def choose(self, prompt: str, first: str, second: str) -> Verdict:
        import llama_cpp

        messages = [{"role": "user", "content": judge_message(prompt, first, second)}]
        text = self.template.render(messages, generation_prompt=True)
        tokens = self.llm._model.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        tokens = tokens[-(self.llm.n_ctx() - 1) :]
        self.llm.reset()
        self.llm.eval(tokens)
        # Without logits_all, Llama.eval keeps no scores: read the last token's logits from llama.cpp.
        logits = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        a, b = (float(logits[token]) for token in self.choices)
        return "A" if a > b else "B" if b > a else "tie"

    def close(self) -> None:
        self.llm.close()


class EndpointJudge:
    """An OpenAI-compatible chat endpoint as the judge (greedy, a few tokens, first A/B wins)."""

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 120.0
    ) -> None:
        import httpx

        self.name = f"{model} @ {base_url}"
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout_s)

    def choose(self, prompt: str, first: str, second: str) -> Verdict:
        import httpx

        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": judge_message(prompt, first, second)}],
            "temperature": 0,
            "max_tokens": 8,
        }
        try:
            response = self.client.post(self.url, json=body)
            response.raise_for_status()
            text = response.json()["choices"][0]["message"]["content"] or ""
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as error:
            raise EvalError(f"judge endpoint {self.url} failed: {error}") from error
        match = re.search(r"\b([AB])\b", text.strip().upper())
        return match.group(1) if match else "tie"  # type: ignore[return-value]

    def close(self) -> None:
        self.client.close()
