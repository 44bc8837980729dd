"""Token counts for fitting a conversation into a remote model's window.

The servers' own tokenizers count the text where they offer one: llama-cpp-python's server
(`POST /extras/tokenize/count`), llama.cpp's `llama-server` and vLLM (`POST /tokenize`; one body
serves both: llama-server reads `content`, vLLM `prompt`). Which one a server speaks is found out
on the first count and kept. Without any, the count is an estimate: one token per 3 UTF-8 bytes,
more than real tokenizers use for English (~4 characters a token) so trimming errs on the safe side.

The chat template is not rendered remotely (only some servers can), so each message adds
`TOKENS_PER_MESSAGE` and every prompt `TOKENS_PER_PROMPT` (BOS, the generation prompt, and the
date header Llama 3.1's template writes into the system message). Texts are counted as they are
sent (template markers neutralized, `core.remote.text`). Each text is counted once
(kept in a small cache), so fitting a long history costs one request per new message.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx

from core.engines.base import Message
from core.remote.endpoints import Endpoints
from core.remote.text import neutralize_markers

log = logging.getLogger(__name__)

TOKENS_PER_MESSAGE = 8  # role header and end-of-turn markers (ChatML and Llama 3 use 5)
TOKENS_PER_PROMPT = 32
BYTES_PER_TOKEN_ESTIMATE = 3
CACHE_SIZE = 4096

# (path under the server's root, request body): tried in this order.
TOKENIZE_APIS: list[tuple[str, Callable[[str, str], dict[str, Any]]]] = [
    ("/extras/tokenize/count", lambda text, model: {"input": text, "model": model}),
    (
        "/tokenize",
        lambda text, model: {"content": text, "prompt": text, "model": model, "add_special": False},
    ),
]
_UNKNOWN = "unknown"


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN_ESTIMATE)


class RemoteTokenizer:
    def __init__(self, endpoints: Endpoints, model_name: Callable[[], str], headers: dict[str, str]) -> None:
        self.endpoints = endpoints
        self.model_name = model_name
        self.headers = headers
        self.api: str | None = _UNKNOWN  # the working path, None when the servers have none
        self._counts: OrderedDict[str, int] = OrderedDict()

    @property
    def exact(self) -> bool:
        """Whether counts come from a server's tokenizer (False: estimated)."""
        return self.api not in (None, _UNKNOWN)

    async def count_messages(self, messages: list[Message]) -> int:
        counts = await asyncio.gather(*(self.count_text(m["content"]) for m in messages))
        return sum(counts) + TOKENS_PER_MESSAGE * len(messages) + TOKENS_PER_PROMPT

    async def count_text(self, text: str) -> int:
        if not text:
            return 0
        if (cached := self._counts.get(text)) is not None:
            self._counts.move_to_end(text)
            return cached
        sent = neutralize_markers(text)  # what the server will read (for the system prompt: a bound)
        count = await self._server_count(sent)
        if count is None:
            return estimate_tokens(sent)  # not cached: the server may count it next time
        self._counts[text] = count
        while len(self._counts) > CACHE_SIZE:
            self._counts.popitem(last=False)
        return count

    async def truncate(self, text: str, max_tokens: int) -> str:
        """A prefix of `text` within `max_tokens` (cut in proportion, then checked; a few rounds)."""
        count = await self.count_text(text)
        if count <= max_tokens:
            return text
        cut = len(text)
        for _ in range(8):
            cut = int(cut * max_tokens / count * 0.95)
            if cut <= 0:
                return ""
            count = await self.count_text(text[:cut])
            if count <= max_tokens:
                return text[:cut]
        return text[: max(0, max_tokens)]  # a token is at least one character: this fits

    async def _server_count(self, text: str) -> int | None:
        if self.api is None:
            return None
        endpoint = self.endpoints.pick(ignore_backoff=True)
        if endpoint is None:
            return None
        apis = TOKENIZE_APIS if self.api == _UNKNOWN else [a for a in TOKENIZE_APIS if a[0] == self.api]
        for path, body in apis:
            try:
                response = await self.endpoints.client.post(
                    f"{endpoint.root}{path}",
                    json=body(text, self.model_name()),
                    headers=self.headers,
                    timeout=10.0,
                )
            except httpx.HTTPError:
                return None  # unreachable now: estimate this once, decide nothing
            if response.status_code in (400, 404, 405, 422, 501):
                continue  # not this server's API
            if response.status_code != 200:
                return None
            count = _parse_count(response)
            if count is None:
                continue
            if self.api == _UNKNOWN:
                log.info("%s counts tokens with %s%s", endpoint.url, endpoint.root, path)
            self.api = path
            return count
        if self.api == _UNKNOWN:
            log.info("%s has no tokenize endpoint: token counts are estimates", endpoint.url)
            self.api = None
        return None


def _parse_count(response: httpx.Response) -> int | None:
    try:
        data = response.json()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("count"), int):
        return data["count"]
    if isinstance(data.get("tokens"), list) and data["tokens"]:
        return len(data["tokens"])
    return None
