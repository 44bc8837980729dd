"""The embedded engine: a GGUF model on the CPU through llama-cpp-python.

One `Llama` gives us the model, tokenizer and chat template. Generation runs on our own
llama.cpp context with several sequences ("slots", as llama.cpp's server does): each active
conversation keeps its KV cache in its own slot, so a new turn only reads the new tokens,
even when several users take turns. See docs/engine.md.
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from core.engines.base import EngineKind, GenerationRequest, GenerationStats, Message, thread_safe
from core.engines.chat_tokens import ChatTokenizer, shared_continuation
from core.engines.prompt_cache import PromptCache, SavedState
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
    ahead: list[int] = field(default_factory=list)  # the next turn's opening, read while idle

    @property
    def reads_ahead(self) -> bool:
        """Idle, with the next turn's opening still to read."""
        return bool(self.ahead) and not self.busy


# Tokens of the next turn's opening that differ from the reply's own tokens (its last ones read
# again) beyond this are not read ahead: the template rewrites earlier turns, nothing to gain.
READ_AHEAD_MAX_TOKENS = 32


@dataclass
class Generation:
    """One request in flight: its slot, the tokens it still has to feed, its sampler.

    `pending` holds the prompt tokens not yet read while the request reads its prompt (possibly
    over several steps, `prefill_chunk` tokens at most per step), then the one token it sampled
    last, which the next step feeds back."""

    slot: Slot
    stats: GenerationStats
    pending: list[int]
    budget: int
    sampler: internals.LlamaSampler | None  # None: greedy, an argmax over the logits row
    decoder: codecs.IncrementalDecoder
    order: int = 0  # admission order: waiting prompts are read first come, first served
    reading: bool = True  # still reading its prompt (nothing sampled yet)
    logit_index: int | None = None
    prefill_steps: int = 0  # steps that read part of its prompt
    messages: list[Message] = field(default_factory=list)  # the prompt's messages, for reading ahead
    reply: list[str] = field(default_factory=list)  # the text given out so far
    banned_first: int | None = None  # a regenerate's first token may not be the old answer's


def _common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64)
    first = int(differ.argmax())
    return first if differ[first] else n


class _Batch:
    """A `llama_batch` over numpy arrays we own, filled with a few slice assignments per step
    instead of five ctypes stores per token. One sequence per token: `seq_id[i]` points at the
    slot's entry of a constant table of sequence ids."""

    def __init__(self, n_tokens: int, n_seq: int) -> None:
        self.capacity = n_tokens
        self.token = np.zeros(n_tokens, dtype=np.int32)
        self.pos = np.zeros(n_tokens, dtype=np.int32)
        self.n_seq_id = np.ones(n_tokens, dtype=np.int32)
        self.seq_ids = np.arange(n_seq, dtype=np.int32)
        self.seq_ptr = np.zeros(n_tokens, dtype=np.uintp)
        self.logits = np.zeros(n_tokens, dtype=np.int8)
        base, stride = self.seq_ids.ctypes.data, self.seq_ids.itemsize
        self.seq_addr = [base + stride * seq for seq in range(n_seq)]
        self.batch = llama_cpp.llama_batch(
            n_tokens=0,
            token=self.token.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token)),
            embd=None,
            pos=self.pos.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_pos)),
            n_seq_id=self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            seq_id=ctypes.cast(
                self.seq_ptr.ctypes.data, ctypes.POINTER(ctypes.POINTER(llama_cpp.llama_seq_id))
            ),
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )

    def put(self, at: int, tokens: list[int], start: int, seq_id: int, want_logits: bool) -> int:
        """Rows [at, at + len(tokens)): `tokens` at positions start.. of sequence `seq_id`.
        Returns the row after them."""
        end = at + len(tokens)
        self.token[at:end] = tokens
        self.pos[at:end] = np.arange(start, start + len(tokens), dtype=np.int32)
        self.seq_ptr[at:end] = self.seq_addr[seq_id]
        self.logits[at:end] = 0
        if want_logits:
            self.logits[end - 1] = 1
        return end


class LlamaEngine:
    kind: ClassVar[EngineKind] = "batched"  # begin/step/end: one decode per step for all replies

    def __init__(
        self,
        name: str,
        llm: llama_cpp.Llama,
        *,
        context_length: int,
        slots: int,
        threads: int,
        prefill_chunk: int = 256,
        prompt_cache_bytes: int = 0,
    ) -> None:
        self.name = name
        self.llm = llm
        self.model = llm._model
        self.context_length = context_length
        self.prefill_chunk = prefill_chunk
        # One step holds a token for every generating request plus `prefill_chunk` prompt tokens.
        self.n_batch = prefill_chunk + slots
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
        self.batch = _Batch(self.n_batch, slots)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.slots = [Slot(seq_id) for seq_id in range(slots)]
        self.prompt_cache = PromptCache(prompt_cache_bytes)  # KV of conversations that lost their slot
        self._piece_buffer = ctypes.create_string_buffer(64)
        self._pieces: dict[int, bytes | None] = {}  # token -> its bytes, None for end-of-generation
        self._prompts: OrderedDict[tuple[tuple[str, str], ...], list[int]] = OrderedDict()
        self._admitted = itertools.count()
        self.steps = 0  # llama_decode calls made by step(): tests count steps, not seconds
        metadata = llm.metadata
        template = metadata.get("tokenizer.chat_template") or FALLBACK_TEMPLATE
        bos, eos = self.model.token_bos(), self.model.token_eos()
        self.formatter = Jinja2ChatFormatter(
            template=template,
            bos_token=self.model.token_get_text(bos) if bos >= 0 else "",
            eos_token=self.model.token_get_text(eos) if eos >= 0 else "",
        )
        self.chat = ChatTokenizer(self.model, self.formatter)  # message content is only ever text

    @classmethod
    def load(cls, entry: ModelEntry, settings: CoreSettings) -> LlamaEngine:
        if entry.path is None:  # the pool gives remote entries to the remote engine
            raise ValueError(f"model {entry.name!r} has no GGUF file to load")
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
            prefill_chunk=settings.prefill_chunk,
            prompt_cache_bytes=settings.prompt_cache_mb * 2**20,
        )

    # -- text <-> tokens --------------------------------------------------------------------
    # Rendering and tokenizing only read the vocabulary, which llama.cpp's own server also does
    # from its HTTP threads while its main loop decodes: `LocalModel.call` runs these at once in
    # the caller's thread instead of queueing them behind a decode step (`thread_safe`).
    @thread_safe
    def render(self, messages: list[Message]) -> str:
        return self.chat.render(messages)

    @thread_safe
    def prompt_tokens(self, messages: list[Message]) -> list[int]:
        """The prompt's tokens: control tokens only where the template puts them, message content
        read as text, so no message can close its turn and open a forged one (`ChatTokenizer`).
        The last few prompts are remembered: the service counts the tokens of the very messages
        it then asks to generate from, and `begin()` reuses that work."""
        key = tuple((message["role"], message["content"]) for message in messages)
        tokens = self._prompts.get(key)
        if tokens is None:
            # The template writes the BOS text itself where the model wants one.
            tokens = self.chat.tokens(messages)
            self._prompts[key] = tokens
            while len(self._prompts) > 4 * len(self.slots):
                try:
                    self._prompts.popitem(last=False)
                except KeyError:  # another thread emptied it meanwhile
                    break
        return list(tokens)

    @thread_safe
    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.prompt_tokens(messages))

    @thread_safe
    def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        tokens = self.model.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if len(tokens) <= max_tokens:
            return text
        return self.model.detokenize(tokens[: max(0, max_tokens)]).decode("utf-8", errors="ignore")

    def _piece(self, token: int) -> bytes | None:
        """The token's bytes, or None for an end-of-generation token; looked up in llama.cpp once
        per token id (its own helper returns a NUL-padded 32-byte buffer)."""
        piece = self._pieces.get(token, b"")
        if piece == b"":
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                piece = None
            else:
                buffer = self._piece_buffer
                size = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
                if size < 0:
                    self._piece_buffer = buffer = ctypes.create_string_buffer(-size)
                    size = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, -size, 0, False)
                piece = buffer.raw[:size]
            self._pieces[token] = piece
        return piece

    # -- slots ------------------------------------------------------------------------------
    def _slot_for(self, conversation_id: str, prompt: list[int]) -> Slot:
        """The slot for a new turn. An idle slot that already holds nearly all of this prompt (the
        same first question in a new conversation; llama.cpp's server too picks slots by prompt
        similarity) is taken as it is. Otherwise, with the prompt cache on, a slot is only a
        place: the lowest-numbered idle one, so that the busy slots stay consecutive — llama.cpp
        computes each run of consecutive sequences as one ubatch, and scattered slots made every
        step cost up to one decode per reply (4 replies in 8 slots: 38 vs 81 tokens/s here,
        docs/engine.md). The conversation's own KV moves there through host memory (~1 ms), and
        what the slot held is saved for its own conversation. Without the cache: the
        conversation's own idle slot, else an empty one, else the least recently used. A recycled
        slot keeps what the new prompt shares with it (the system prompt, typically)."""
        idle = [slot for slot in self.slots if not slot.busy]
        if not idle:
            raise RuntimeError("all KV slots are busy (LORABOT_PARALLEL must not exceed LORABOT_KV_SLOTS)")
        own = next((slot for slot in idle if slot.conversation_id == conversation_id), None)
        twin = None
        if own is None and conversation_id not in self.prompt_cache:
            shared = {slot.seq_id: _common_prefix(slot.tokens, prompt) for slot in idle}
            best = max(idle, key=lambda s: (shared[s.seq_id], -s.last_used))
            if shared[best.seq_id] >= 0.9 * len(prompt):  # not just the system prompt they all share
                twin = best
        if twin is not None:
            slot = twin
        elif not self.prompt_cache.capacity_bytes:
            empty = [slot for slot in idle if slot.conversation_id is None]
            slot = own or min(empty or idle, key=lambda s: s.last_used)
        else:
            slot = min(idle, key=lambda s: s.seq_id)
            if own is not None and own is not slot:
                self._save(own)  # restored into `slot` below
                self._clear(own)
        if slot.conversation_id != conversation_id:
            self._save(slot)  # its conversation's next turn restores this instead of reading it all again
        slot.conversation_id = conversation_id
        self._restore(slot, conversation_id, prompt)
        return slot

    def _save(self, slot: Slot) -> None:
        """Copy the slot's KV cells to the prompt cache, under its conversation's id."""
        cache = self.prompt_cache
        if not cache.capacity_bytes or not slot.tokens or slot.conversation_id is None:
            return
        size = llama_cpp.llama_state_seq_get_size(self.ctx.ctx, slot.seq_id)
        if not 0 < size <= cache.capacity_bytes:
            return
        data = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(self.ctx.ctx, data, size, slot.seq_id) == size:
            cache.put(slot.conversation_id, SavedState(list(slot.tokens), data))

    def _restore(self, slot: Slot, conversation_id: str, prompt: list[int]) -> None:
        """Put the conversation's saved KV cells back into `slot` when they cover more of the
        prompt than the slot already holds (a failed copy leaves the slot empty: a full read)."""
        state = self.prompt_cache.take(conversation_id)
        if state is None or _common_prefix(state.tokens, prompt) <= _common_prefix(slot.tokens, prompt):
            return
        self._clear(slot)
        slot.conversation_id = conversation_id
        if llama_cpp.llama_state_seq_set_data(self.ctx.ctx, state.data, len(state.data), slot.seq_id):
            slot.tokens = state.tokens
            self.prompt_cache.restored += 1
        else:
            self._clear(slot)
            slot.conversation_id = conversation_id

    def _clear(self, slot: Slot) -> None:
        self.ctx.kv_cache_seq_rm(slot.seq_id, -1, -1)
        slot.tokens = []
        slot.ahead = []
        slot.conversation_id = None

    def forget(self, conversation_id: str) -> None:
        self.prompt_cache.drop(conversation_id)
        for slot in self.slots:
            if slot.conversation_id == conversation_id:
                if slot.busy:
                    slot.forget_after_use = True
                else:
                    self._clear(slot)

    def _reuse_prefix(self, slot: Slot, prompt: list[int]) -> int:
        """Drop the slot's tokens after the common prefix with `prompt`; returns its length."""
        common = min(_common_prefix(slot.tokens, prompt), len(prompt) - 1)  # re-read one token for logits
        if common < len(slot.tokens):
            if not self.ctx.kv_cache_seq_rm(slot.seq_id, common, -1):
                self._clear(slot)
                return 0
            del slot.tokens[common:]
        return common

    # -- generation -------------------------------------------------------------------------
    def _sampler(self, request: GenerationRequest) -> internals.LlamaSampler | None:
        """llama.cpp's sampler chain, or None for greedy decoding: the chain would first copy the
        whole vocabulary into a candidates array (~50 µs a token for SmolLM2's 49k) to take the
        same argmax that numpy takes over the logits row in place (~15 µs)."""
        if request.temperature <= 0:
            return None
        sampler = internals.LlamaSampler()
        sampler.add_top_k(40)
        sampler.add_top_p(request.top_p, 1)
        sampler.add_min_p(0.05, 1)
        sampler.add_temp(request.temperature)
        sampler.add_dist(request.seed)
        return sampler

    def _argmax(self, logit_index: int) -> int:
        """The most likely next token at batch row `logit_index` (the first of equals, as
        llama.cpp's greedy sampler picks)."""
        row = llama_cpp.llama_get_logits_ith(self.ctx.ctx, logit_index)
        return int(np.ctypeslib.as_array(row, shape=(self.n_vocab,)).argmax())

    def begin(self, request: GenerationRequest, stats: GenerationStats) -> Generation:
        """Claim a slot for the request and line up the prompt tokens it still has to read; the
        reading itself happens in `step`, a chunk at a time, alongside the other requests."""
        prompt = self.prompt_tokens(request.messages)
        stats.prompt_tokens = len(prompt)
        if len(prompt) >= self.context_length:
            raise ValueError(
                f"prompt of {len(prompt)} tokens does not fit the {self.context_length}-token window"
            )
        slot = self._slot_for(request.conversation_id, prompt)
        slot.busy = True
        slot.ahead = []  # not read yet: the prompt holds those tokens anyway
        slot.last_used = time.monotonic()
        stats.reused_tokens = self._reuse_prefix(slot, prompt)
        return Generation(
            slot=slot,
            stats=stats,
            pending=prompt[stats.reused_tokens :],
            budget=min(request.max_new_tokens, self.context_length - len(prompt)),
            sampler=self._sampler(request),
            decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"),
            order=next(self._admitted),
            messages=list(request.messages),
            banned_first=self._first_token(request.avoid_start),
        )

    def _first_token(self, text: str | None) -> int | None:
        """The token an answer spelled `text` starts with (None for no text)."""
        if not text:
            return None
        tokens = self.model.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        return tokens[0] if tokens else None

    def _ban(self, logit_index: int, token: int) -> None:
        """Make `token` impossible at batch row `logit_index` (greedy and sampled alike read this row)."""
        row = llama_cpp.llama_get_logits_ith(self.ctx.ctx, logit_index)
        np.ctypeslib.as_array(row, shape=(self.n_vocab,))[token] = -np.inf

    def step(self, generations: list[Generation]) -> list[tuple[str, bool]]:
        """Advance the generations with ONE llama_decode (continuous batching, as llama.cpp's
        server does): one token for each generation already generating, plus up to
        `prefill_chunk` prompt tokens shared by those still reading, first come first served; a
        prompt longer than that is read over several steps. Returns (new text, finished) per
        generation: ("", False) for one still reading.

        The batch lists its sequences in increasing slot order: with one KV stream per slot,
        llama.cpp computes a run of consecutive sequence ids together, and splits the batch
        wherever the next sequence id is not the previous one + 1 (see docs/engine.md)."""
        room = self.prefill_chunk
        plan: list[tuple[Slot, list[int], Generation | None, bool]] = []  # what each slot feeds this step
        for generation in generations:
            generation.logit_index = None
            if not generation.reading:
                plan.append((generation.slot, generation.pending, generation, True))
        for generation in sorted((g for g in generations if g.reading), key=lambda g: g.order):
            if room <= 0:
                break
            take = generation.pending[:room]
            room -= len(take)
            plan.append((generation.slot, take, generation, len(take) == len(generation.pending)))
        if not any(generation.reading for generation in generations):  # never before someone's first token
            for slot in [slot for slot in self.slots if slot.reads_ahead]:
                if room <= 0:
                    break
                take, slot.ahead = slot.ahead[:room], slot.ahead[room:]
                room -= len(take)
                plan.append((slot, take, None, False))
        self._decode(plan)
        return [self._sample(generation) for generation in generations]

    def _decode(self, plan: list[tuple[Slot, list[int], Generation | None, bool]]) -> None:
        """One llama_decode of what each slot feeds: (slot, tokens, its generation or None when
        reading ahead, whether the last token's logits are wanted)."""
        plan.sort(key=lambda entry: entry[0].seq_id)
        batch = self.batch
        used = 0
        for slot, take, generation, last in plan:
            used = batch.put(used, take, len(slot.tokens), slot.seq_id, last)
            slot.tokens.extend(take)
            if generation is None:
                continue
            if last:
                generation.logit_index = used - 1
            if generation.reading:
                del generation.pending[: len(take)]
                generation.prefill_steps += 1
            else:
                generation.pending = []
        if used:
            batch.batch.n_tokens = used
            self.steps += 1
            code = llama_cpp.llama_decode(self.ctx.ctx, batch.batch)
            if code != 0:
                for slot, _, generation, _ in plan:
                    if generation is None:
                        self._clear(slot)  # its cells may be half written: start it afresh
                raise RuntimeError(f"llama_decode returned {code}")

    def _sample(self, generation: Generation) -> tuple[str, bool]:
        if generation.logit_index is None:
            return "", False  # still reading its prompt
        generation.reading = False
        stats = generation.stats
        if generation.banned_first is not None:  # a regenerate: never the old answer by construction
            self._ban(generation.logit_index, generation.banned_first)
            generation.banned_first = None
        if generation.sampler is None:
            token = self._argmax(generation.logit_index)
        else:
            token = llama_cpp.llama_sampler_sample(
                generation.sampler.sampler, self.ctx.ctx, generation.logit_index
            )
        piece = self._piece(token)
        if piece is None:  # end of generation
            stats.finish_reason = "stop"
            text, finished = generation.decoder.decode(b"", final=True), True
        else:
            stats.completion_tokens += 1
            text = generation.decoder.decode(piece)
            finished = stats.completion_tokens >= generation.budget
            if finished:
                stats.finish_reason = "length"
                text += generation.decoder.decode(b"", final=True)
            else:
                generation.pending = [token]
        generation.reply.append(text)
        return text, finished

    def end(self, generation: Generation, *, failed: bool = False) -> None:
        """Release the generation's slot (its KV cache stays for the conversation's next turn),
        and line up that turn's opening to be read while the slot is idle (`read_ahead`)."""
        slot = generation.slot
        slot.busy = False
        slot.last_used = time.monotonic()
        if failed or slot.forget_after_use:
            slot.forget_after_use = False
            self._clear(slot)
        elif generation.stats.finish_reason in ("stop", "length"):
            self._plan_read_ahead(slot, generation)

    # -- reading ahead ----------------------------------------------------------------------
    def _plan_read_ahead(self, slot: Slot, generation: Generation) -> None:
        """Line up the tokens the conversation's next prompt will surely start with: the reply
        closed by the template and the next user turn opened (`<|im_end|>\n<|im_start|>user\n`
        for ChatML), found as what two renderings with different next questions share. Reading
        them now, while the user types, means the next turn reads only the question and the
        generation prompt, as a first turn does after the cached system prompt (docs/engine.md).
        A wrong guess costs nothing but those few tokens: the next turn keeps only the prefix
        it shares with the slot."""
        history = [*generation.messages, {"role": "assistant", "content": "".join(generation.reply)}]
        chat = self.chat
        try:
            prompt = chat.segments(generation.messages)  # what the slot's first prompt_tokens tokens hold
            one = chat.segments([*history, {"role": "user", "content": "Hi"}])
            two = chat.segments([*history, {"role": "user", "content": "?"}])
        except Exception:  # a template that cannot render this history: nothing to read ahead
            return
        # Empty when the template renders earlier turns differently once the reply is in. Only the
        # reply and what follows is tokenized (~0.1 ms, the whole history ~0.7 ms here): the
        # prompt's own tokens are the slot's first ones.
        tail = chat.tokenize(shared_continuation(prompt, one, two))
        base = generation.stats.prompt_tokens
        kept = base + _common_prefix(slot.tokens[base:], tail)
        ahead = tail[kept - base :]
        if not ahead or len(ahead) > READ_AHEAD_MAX_TOKENS or base + len(tail) >= self.context_length:
            return
        if kept < len(slot.tokens):  # the reply's last tokens read back differently: keep the template's
            if not self.ctx.kv_cache_seq_rm(slot.seq_id, kept, -1):
                return
            del slot.tokens[kept:]
        slot.ahead = ahead

    def read_ahead(self) -> bool:
        """Read one idle slot's pending opening (the compute thread calls this when it has nothing
        else to do, and looks for new requests between two calls: a request that arrives waits
        for one small decode at most). Returns whether any remain."""
        slot = next((slot for slot in self.slots if slot.reads_ahead), None)
        if slot is not None:
            take, slot.ahead = slot.ahead, []  # at most READ_AHEAD_MAX_TOKENS
            self._decode([(slot, take, None, False)])
        return any(slot.reads_ahead for slot in self.slots)

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
        self.prompt_cache.clear()
        self.ctx.close()
        self.llm.close()
