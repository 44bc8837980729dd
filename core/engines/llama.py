"""The embedded engine: a GGUF model on the CPU through llama-cpp-python.

One `Llama` gives us the model, tokenizer and chat template. Generation runs on our own
llama.cpp context with several sequences ("slots", as llama.cpp's server does): each active
conversation keeps its KV cache in its own slot, so a new turn only reads the new tokens,
even when several users take turns. See docs/engine.md.
"""

from __future__ import annotations

import codecs
import ctypes
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
from llama_cpp import _internals as internals
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from core.engines.base import GenerationRequest, GenerationStats, Message
from core.registry import ModelEntry
from core.settings import CoreSettings

# ChatML, for GGUFs that carry no chat template of their own.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class CorruptModelFile(ValueError):
    pass


def check_gguf(path: Path) -> None:
    """Fail fast, with a clear reason, before llama.cpp sees a file it cannot load."""
    if not path.is_file():
        raise CorruptModelFile(f"file not found: {path}")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise CorruptModelFile(f"{path.name} is not a GGUF file (bad magic {magic!r})")


@dataclass
class Slot:
    """One llama.cpp sequence, holding the KV cache of one conversation."""

    seq_id: int
    conversation_id: str | None = None
    tokens: list[int] = field(default_factory=list)
    last_used: float = 0.0
    busy: bool = False
    forget_after_use: bool = False


@dataclass
class Generation:
    """One request in flight: its slot, the prompt tokens not yet read, its sampler."""

    slot: Slot
    stats: GenerationStats
    pending: list[int]
    budget: int
    sampler: internals.LlamaSampler
    decoder: codecs.IncrementalDecoder
    logit_index: int | None = None


class LlamaEngine:
    def __init__(self, name: str, llm: llama_cpp.Llama, *, context_length: int, slots: int, threads: int) -> None:
        self.name = name
        self.llm = llm
        self.model = llm._model
        self.context_length = context_length
        self.n_batch = 512
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = context_length * slots
        params.n_seq_max = slots
        params.kv_unified = False  # each conversation gets its own context_length of KV
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = internals.LlamaContext(model=self.model, params=params, verbose=False)
        self.batch = internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model.model)
        self.slots = [Slot(seq_id) for seq_id in range(slots)]
        self._piece_buffer = ctypes.create_string_buffer(64)
        metadata = llm.metadata
        template = metadata.get("tokenizer.chat_template") or FALLBACK_TEMPLATE
        bos, eos = self.model.token_bos(), self.model.token_eos()
        self.formatter = Jinja2ChatFormatter(
            template=template,
            bos_token=self.model.token_get_text(bos) if bos >= 0 else "",
            eos_token=self.model.token_get_text(eos) if eos >= 0 else "",
        )

    @classmethod
    def load(cls, entry: ModelEntry, settings: CoreSettings) -> LlamaEngine:
        check_gguf(entry.path)
        try:
            llm = llama_cpp.Llama(
                model_path=str(entry.path),
                n_ctx=256,  # the Llama's own context is unused; ours is built below
                n_threads=settings.resolved_threads,
                verbose=False,
            )
        except (ValueError, RuntimeError) as error:
            raise CorruptModelFile(f"llama.cpp could not load {entry.path.name}: {error}") from error
        n_ctx_train = llm._model.n_ctx_train()
        wanted = entry.context_length or settings.context_length
        context_length = min(wanted, n_ctx_train) if n_ctx_train > 0 else wanted
        return cls(
            entry.name,
            llm,
            context_length=context_length,
            slots=settings.kv_slots,
            threads=settings.resolved_threads,
        )

    # -- text <-> tokens --------------------------------------------------------------------
    def render(self, messages: list[Message]) -> str:
        return self.formatter(messages=messages).prompt

    def prompt_tokens(self, messages: list[Message]) -> list[int]:
        # The template writes the BOS text itself where the model wants one.
        return self.model.tokenize(self.render(messages).encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.prompt_tokens(messages))

    def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        tokens = self.model.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if len(tokens) <= max_tokens:
            return text
        return self.model.detokenize(tokens[: max(0, max_tokens)]).decode("utf-8", errors="ignore")

    def _piece(self, token: int) -> bytes:
        """The token's bytes (llama-cpp-python's own helper returns a NUL-padded 32-byte buffer)."""
        size = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece_buffer, len(self._piece_buffer), 0, False)
        if size < 0:
            self._piece_buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece_buffer, -size, 0, False)
        return self._piece_buffer.raw[:size]

    # -- slots ------------------------------------------------------------------------------
    def _slot_for(self, conversation_id: str) -> Slot:
        """The conversation's idle slot if it has one, else the least recently used idle slot."""
        idle = [slot for slot in self.slots if not slot.busy]
        if not idle:
            raise RuntimeError("all KV slots are busy (LORABOT_PARALLEL must not exceed LORABOT_KV_SLOTS)")
        for slot in idle:
            if slot.conversation_id == conversation_id:
                return slot
        slot = min(idle, key=lambda s: (s.conversation_id is not None, s.last_used))
        self._clear(slot)
        slot.conversation_id = conversation_id
        return slot

    def _clear(self, slot: Slot) -> None:
        self.ctx.kv_cache_seq_rm(slot.seq_id, -1, -1)
        slot.tokens = []
        slot.conversation_id = None

    def forget(self, conversation_id: str) -> None:
        for slot in self.slots:
            if slot.conversation_id == conversation_id:
                if slot.busy:
                    slot.forget_after_use = True
                else:
                    self._clear(slot)

    def _reuse_prefix(self, slot: Slot, prompt: list[int]) -> int:
        """Drop the slot's tokens after the common prefix with `prompt`; returns its length."""
        common = 0
        limit = min(len(slot.tokens), len(prompt) - 1)  # re-read at least one token for logits
        while common < limit and slot.tokens[common] == prompt[common]:
            common += 1
        if common < len(slot.tokens):
            if not self.ctx.kv_cache_seq_rm(slot.seq_id, common, -1):
                self._clear(slot)
                return 0
            del slot.tokens[common:]
        return common

    # -- generation -------------------------------------------------------------------------
    def _sampler(self, request: GenerationRequest) -> internals.LlamaSampler:
        sampler = internals.LlamaSampler()
        if request.temperature <= 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(40)
            sampler.add_top_p(request.top_p, 1)
            sampler.add_min_p(0.05, 1)
            sampler.add_temp(request.temperature)
            sampler.add_dist(request.seed)
        return sampler

    def begin(self, request: GenerationRequest, stats: GenerationStats) -> Generation:
        """Claim a slot for the request and line up the prompt tokens it still has to read."""
        prompt = self.prompt_tokens(request.messages)
        stats.prompt_tokens = len(prompt)
        if len(prompt) >= self.context_length:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the {self.context_length}-token window")
        slot = self._slot_for(request.conversation_id)
        slot.busy = True
        slot.last_used = time.monotonic()
        stats.reused_tokens = self._reuse_prefix(slot, prompt)
        return Generation(
            slot=slot,
            stats=stats,
            pending=prompt[stats.reused_tokens :],
            budget=min(request.max_new_tokens, self.context_length - len(prompt)),
            sampler=self._sampler(request),
            decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"),
        )

    def step(self, generations: list[Generation]) -> list[tuple[str, bool]]:
        """Advance every generation by one llama_decode: one new token each for those already
        generating, and prompt chunks for those still reading, all in one batch (continuous
        batching, as llama.cpp's server does). Returns (new text, finished) per generation."""
        batch = self.batch.batch
        used = 0
        reading_last = [len(g.pending) == 1 for g in generations]
        order = sorted(range(len(generations)), key=lambda i: not reading_last[i])  # decoders first
        for index in order:
            generation = generations[index]
            generation.logit_index = None
            take = generation.pending[: self.n_batch - used]
            if not take:
                continue
            slot = generation.slot
            start = len(slot.tokens)
            for offset, token in enumerate(take):
                batch.token[used + offset] = token
                batch.pos[used + offset] = start + offset
                batch.n_seq_id[used + offset] = 1
                batch.seq_id[used + offset][0] = slot.seq_id
                batch.logits[used + offset] = False
            used += len(take)
            if len(take) == len(generation.pending):
                batch.logits[used - 1] = True
                generation.logit_index = used - 1
            slot.tokens.extend(take)
            del generation.pending[: len(take)]
        batch.n_tokens = used
        self.ctx.decode(self.batch)
        return [self._sample(generation) for generation in generations]

    def _sample(self, generation: Generation) -> tuple[str, bool]:
        if generation.logit_index is None:
            return "", False  # still reading its prompt
        stats = generation.stats
        token = generation.sampler.sample(self.ctx, generation.logit_index)
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            stats.finish_reason = "stop"
            return generation.decoder.decode(b"", final=True), True
        stats.completion_tokens += 1
        text = generation.decoder.decode(self._piece(token))
        if stats.completion_tokens >= generation.budget:
            stats.finish_reason = "length"
            return text + generation.decoder.decode(b"", final=True), True
        generation.pending = [token]
        return text, False

    def end(self, generation: Generation, *, failed: bool = False) -> None:
        """Release the generation's slot (its KV cache stays for the conversation's next turn)."""
        slot = generation.slot
        slot.busy = False
        slot.last_used = time.monotonic()
        if failed or slot.forget_after_use:
            slot.forget_after_use = False
            self._clear(slot)

    def generate(
        self, request: GenerationRequest, cancel: threading.Event, stats: GenerationStats
    ) -> Iterator[str]:
        """One request on its own (the worker batches several through begin/step/end)."""
        generation = self.begin(request, stats)
        failed = False
        try:
            while True:
                if cancel.is_set():
                    stats.finish_reason = "cancelled"
                    return
                text, finished = self.step([generation])[0]
                if text:
                    yield text
                if finished:
                    return
        except BaseException:
            failed = True
            raise
        finally:
            self.end(generation, failed=failed)

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()
        self.llm.close()
