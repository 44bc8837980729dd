"""The engine seam: what the core asks of an engine, in the two shapes an engine can take.

- A **local** engine computes on this machine. Its methods are blocking and only ever called from
  the compute thread (`core.compute.ComputeThread`), because a `llama_cpp.Llama` is not
  thread-safe, with one exception: methods marked `@thread_safe` (tokenizer work that only reads
  the vocabulary) are run by `LocalModel.call` at once in the caller's thread.
  - `BatchedEngine` (the llama.cpp one) advances all its replies with one decode per step:
    `begin(request, stats) -> state`, `step([state, ...]) -> [(text, finished), ...]`,
    `end(state, failed=...)`, and `read_ahead()` for work the compute thread does when idle.
  - `GeneratorEngine` (test engines) yields the pieces of one reply from `generate`; the compute
    thread advances such replies one `next()` each, in turn.
- A **remote** engine (`RemoteEngine`, an OpenAI-compatible inference server) computes elsewhere:
  its methods are coroutines, run on the asyncio side, and never touch the compute thread.

An engine says which it is with its class attribute `kind`; `kind_of` reads it (and `is_local`,
`is_batched`, `is_remote` narrow the type), so the compute thread and the model handles never
guess from the methods an object happens to have. The service uses any kind through one handle,
`core.handles.LoadedModel`: `LocalModel` (through the compute thread) or `RemoteModel`.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol, TypeGuard, TypeVar

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}
EngineKind = Literal["batched", "generator", "remote"]
ENGINE_KINDS: tuple[EngineKind, ...] = ("batched", "generator", "remote")
F = TypeVar("F", bound=Callable[..., object])


def thread_safe(fn: F) -> F:
    """Mark an engine method as safe to call from any thread while the compute thread decodes."""
    fn.thread_safe = True  # type: ignore[attr-defined]
    return fn


def is_thread_safe(fn: Callable[..., object]) -> bool:
    return bool(getattr(fn, "thread_safe", False))


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    conversation_id: str
    messages: list[Message]
    max_new_tokens: int = 400
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 3407
    # a regenerate: the answer it replaces, whose first token the new one may not start with
    # (engines that cannot ban a token sample with a fresh seed only; docs/feedback.md)
    avoid_start: str | None = None


@dataclass
class GenerationStats:
    """Filled in by the engine while it generates."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    extras: dict[str, float] = field(default_factory=dict)


class Engine(Protocol):
    """What every engine has, whatever its kind."""

    kind: ClassVar[EngineKind]
    name: str
    context_length: int


class LocalEngine(Engine, Protocol):
    """An engine computing on this machine, driven from the compute thread (blocking methods)."""

    def count_tokens(self, messages: list[Message]) -> int:
        """Prompt length in tokens once the chat template is applied (with the generation prompt)."""

    def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` that is at most `max_tokens` tokens."""

    def generate(
        self, request: GenerationRequest, cancel: threading.Event, stats: GenerationStats
    ) -> Iterator[str]:
        """Yield pieces of the reply; stop within a token once `cancel` is set."""

    def forget(self, conversation_id: str) -> None:
        """Drop any cached state (KV cache) kept for this conversation."""

    def close(self) -> None:
        """Free the model."""


class GeneratorEngine(LocalEngine, Protocol):
    """A local engine whose replies are advanced one `next()` of `generate` at a time."""

    kind: ClassVar[EngineKind] = "generator"


class BatchedEngine(LocalEngine, Protocol):
    """A local engine that advances all its replies with one decode per step."""

    kind: ClassVar[EngineKind] = "batched"

    def begin(self, request: GenerationRequest, stats: GenerationStats) -> object:
        """Claim what the request needs (a KV slot) and return its state; `step` does the work."""

    def step(self, states: list[object]) -> list[tuple[str, bool]]:
        """One decode for all of `states`: (new text, finished) for each, in order."""

    def end(self, state: object, *, failed: bool = False) -> None:
        """Release the request's resources; `failed` drops what it cached."""

    def read_ahead(self) -> bool:
        """Work worth doing while no request is active (the llama.cpp engine reads the next turn's
        opening into idle slots), one decode at most; returns whether any remains."""


class RemoteEngine(Engine, Protocol):
    """An engine on inference servers elsewhere: coroutines, on the asyncio side only."""

    kind: ClassVar[EngineKind] = "remote"

    async def count_tokens(self, messages: list[Message]) -> int:
        """Prompt length in tokens (the server's tokenizer where it has one, else an estimate)."""

    async def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        """A prefix of `text` of at most about `max_tokens` tokens."""

    def stream(self, request: GenerationRequest, stats: GenerationStats) -> AsyncGenerator[str, None]:
        """Pieces of the reply as the server sends them; closing the generator ends the request."""

    def backpressure_s(self) -> float:
        """Seconds until a server said it would take requests again (0 when one takes them now)."""

    async def forget(self, conversation_id: str) -> None:
        """Drop what is kept for the conversation (the servers keep their own prompt caches)."""

    async def close(self) -> None:
        """Stop health checks and close the connections."""


def kind_of(engine: object) -> EngineKind:
    """The protocol `engine` declares with its `kind`. An engine that declares none is a plain
    generator engine (`generate` only), the simplest thing a test can write."""
    kind = getattr(engine, "kind", "generator")
    for known in ENGINE_KINDS:
        if kind == known:
            return known
    raise TypeError(f"engine {engine!r} declares an unknown kind {kind!r}")


def is_local(engine: object) -> TypeGuard[LocalEngine]:
    """A batched or generator engine: it runs on the compute thread."""
    return kind_of(engine) != "remote"


def is_batched(engine: object) -> TypeGuard[BatchedEngine]:
    return kind_of(engine) == "batched"


def is_remote(engine: object) -> TypeGuard[RemoteEngine]:
    return kind_of(engine) == "remote"
