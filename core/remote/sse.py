"""Server-sent events, read with bounds: the `data` of each event of a `text/event-stream`.

Written here rather than taken from `httpx-sse` because that reads lines without a bound: a
server sending one endless line (a broken proxy, a hostile endpoint) would be buffered whole. Here a
line, and an event's data, longer than `max_bytes` ends the stream with `BadStream`. The body is
decoded incrementally (a UTF-8 character split across two reads is joined; invalid bytes become
U+FFFD), and lines end with CRLF, LF or CR as the SSE specification says.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncGenerator

import httpx

MAX_EVENT_BYTES = 1 << 20  # a chat chunk is well under 1 KB; usage and timings a few KB
_LINE_END = re.compile(r"\r\n|\r|\n")


class BadStream(ValueError):
    """Not an event stream, or one whose lines or events exceed the bound."""


async def event_data(response: httpx.Response, max_bytes: int = MAX_EVENT_BYTES) -> AsyncGenerator[str, None]:
    """The `data` of each event in `response`'s body, in order (events without data are skipped)."""
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" not in content_type:
        raise BadStream(f"expected an event stream, got {content_type.split(';')[0] or 'no content type'!r}")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buffer = ""
    data: list[str] = []
    size = 0
    async for chunk in response.aiter_bytes():
        buffer += decoder.decode(chunk)
        lines, buffer = _split(buffer)
        if len(buffer) > max_bytes:  # characters, a lower bound on the bytes
            raise BadStream(f"an event-stream line longer than {max_bytes} bytes")
        for line in lines:
            if not line:  # a blank line dispatches the event
                if data:
                    yield "\n".join(data)
                data, size = [], 0
                continue
            name, _, value = line.partition(":")
            if name != "data":
                continue  # comments (":"), event, id, retry: not used by chat completions
            value = value.removeprefix(" ")
            size += len(value) + 1
            if size > max_bytes:
                raise BadStream(f"an event larger than {max_bytes} bytes")
            data.append(value)
    # The stream ended: per the specification, an event without its blank line is not dispatched.


def _split(buffer: str) -> tuple[list[str], str]:
    """Complete lines and the unfinished rest. A trailing CR is kept back: an LF may follow it."""
    lines = _LINE_END.split(buffer)
    rest = lines.pop()
    if not rest and buffer.endswith("\r"):
        lines[-1] += "\r"  # "…\r" then "\n…": wait for the next read to decide
        rest = lines.pop()
    return lines, rest
