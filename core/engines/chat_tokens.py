"""Prompt tokens in which only the chat template's own markers are control tokens.

Tokenizing the rendered prompt with special tokens parsed turned any `<|im_end|>` a user typed
into a real end-of-turn marker: one message could close its own turn and open a forged system or
assistant turn, and in a shared group or thread conversation that turn stayed in everyone's
context. So the template is rendered with each message's content replaced by a sentinel, which
says what text is the template's own; the real rendering must equal that skeleton with the
contents put back (the template copied each content verbatim). Template text is split on the
texts of control tokens as llama.cpp's tokenizer splits a prompt (longest first, honouring
lstrip/rstrip); content is never split, only ever text. Each run of text between two control
tokens is then tokenized in one call, as llama.cpp tokenizes such a run when it parses a whole
prompt: for content without markers the tokens are exactly those of tokenizing the whole prompt
with special tokens on, so KV prefixes and saved prompts stay valid.

A template that rewrites content (trims it, say, or tests what it starts with) fails that check;
such a prompt is rendered with every control-token text in the contents broken by a zero-width
space (as the remote engine does, core/remote/text.py), which the tokenizer can only read as text.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import llama_cpp
from llama_cpp import _internals as internals
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from core.engines.base import Message

Segment = tuple[str, bool]  # (text, whether it is the template's own: control-token texts in it are markers)

# Private-use characters around a message's index: no template writes them, and a content is
# never in the skeleton, so whatever a user types cannot be taken for one.
_OPEN, _CLOSE = "\U000f0000", "\U000f0001"
_SENTINEL = re.compile(f"{_OPEN}(\\d+){_CLOSE}")
ZERO_WIDTH_SPACE = "\u200b"
_C_SPACE = " \t\n\v\f\r"  # what llama.cpp's lstrip/rstrip remove (C isspace)
_PARTITIONS_KEPT = 256


@dataclass(frozen=True)
class ControlToken:
    """A token that the tokenizer reads from text only with special tokens parsed."""

    id: int
    text: str
    lstrip: bool  # swallows the whitespace before it
    rstrip: bool  # swallows the whitespace after it


def control_tokens(model: internals.LlamaModel) -> list[ControlToken]:
    """The vocabulary's control (and unknown) tokens, longest text first: the order in which
    llama.cpp's `tokenizer_st_partition` looks for them (user-defined tokens are found with
    special tokens off too, so they need no care here)."""
    vocab = llama_cpp.llama_model_get_vocab(model.model)
    wanted = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    found = []
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        attr = llama_cpp.llama_vocab_get_attr(vocab, token)
        if not attr & wanted:
            continue
        try:
            text = (llama_cpp.llama_vocab_get_text(vocab, token) or b"").decode("utf-8")
        except UnicodeDecodeError:  # no str can contain it
            continue
        if text and ZERO_WIDTH_SPACE not in text:
            lstrip = bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP)
            found.append(ControlToken(token, text, lstrip, bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP)))
    return sorted(found, key=lambda control: -len(control.text))


class ChatTokenizer:
    """Renders a conversation with the chat template and tokenizes it, content as text only.
    Reads the vocabulary only: safe from any thread."""

    def __init__(self, model: internals.LlamaModel, formatter: Jinja2ChatFormatter) -> None:
        self.model = model
        self.formatter = formatter
        self.controls = control_tokens(model)
        self._partitions: dict[str, tuple[str | ControlToken, ...]] = {}

    def render(self, messages: list[Message]) -> str:
        return self.formatter(messages=messages).prompt  # type: ignore[arg-type]  # llama_cpp's message TypedDicts

    def segments(self, messages: list[Message]) -> list[Segment]:
        """The rendered prompt as the template's text and the messages' contents, in order."""
        contents = [message["content"] for message in messages]
        marked = [{**message, "content": f"{_OPEN}{i}{_CLOSE}"} for i, message in enumerate(messages)]
        parts = _SENTINEL.split(self.render(marked))  # template, index, template, index, ..., template
        segments: list[Segment] = []
        for k, part in enumerate(parts):
            if k % 2 == 0:
                if part:
                    segments.append((part, True))
            elif int(part) < len(contents):
                segments.append((contents[int(part)], False))
            else:
                return self._neutralized(messages)
        if "".join(text for text, _ in segments) != self.render(messages):
            return self._neutralized(messages)  # the template does not copy contents verbatim
        return segments

    def _neutralized(self, messages: list[Message]) -> list[Segment]:
        """The whole prompt as template text, rendered from contents whose control-token texts
        are broken by a zero-width space after their first character."""
        return [(self.render([{**m, "content": self.neutralize(m["content"])} for m in messages]), True)]

    def neutralize(self, text: str) -> str:
        """`text` with no control token's text left in it."""
        changed = True
        while changed:  # breaking one text cannot make another, but a loop costs nothing to be sure
            changed = False
            for control in self.controls:
                if control.text in text:
                    text = text.replace(control.text, control.text[0] + ZERO_WIDTH_SPACE + control.text[1:])
                    changed = True
        return text

    def partition(self, text: str) -> tuple[str | ControlToken, ...]:
        """Template text split into raw text and control tokens, as llama.cpp splits it: each
        control token in turn, longest first, found in what earlier ones left as text."""
        cached = self._partitions.get(text)
        if cached is not None:
            return cached
        pieces: list[str | ControlToken] = [text]
        for control in self.controls:
            if not any(isinstance(piece, str) and control.text in piece for piece in pieces):
                continue
            split: list[str | ControlToken] = []
            for piece in pieces:
                if isinstance(piece, ControlToken) or control.text not in piece:
                    split.append(piece)
                    continue
                for i, raw in enumerate(piece.split(control.text)):
                    if i:
                        split.append(control)
                    split.append(raw)
            pieces = split
        result = tuple(piece for piece in pieces if piece != "")
        if len(self._partitions) >= _PARTITIONS_KEPT:
            self._partitions.clear()  # distinct template texts are few; a full dict means odd ones
        self._partitions[text] = result
        return result

    def tokenize(self, segments: list[Segment]) -> list[int]:
        """Token ids of `segments`: control tokens only where template text spells them; each run
        of text between two of them (template text and contents together) tokenized as one."""
        items: list[str | ControlToken] = [""]
        for text, is_template in segments:
            for piece in self.partition(text) if is_template else (text,):
                if isinstance(piece, str) and isinstance(items[-1], str):
                    items[-1] += piece
                else:
                    items.append(piece)
        tokens: list[int] = []
        for i, item in enumerate(items):
            if isinstance(item, ControlToken):
                tokens.append(item.id)
                continue
            following, preceding = items[i + 1] if i + 1 < len(items) else None, items[i - 1] if i else None
            if isinstance(following, ControlToken) and following.lstrip:
                item = item.rstrip(_C_SPACE)
            if isinstance(preceding, ControlToken) and preceding.rstrip:
                item = item.lstrip(_C_SPACE)
            if item:
                tokens += self._text_tokens(item.encode("utf-8"))
        return tokens

    def _text_tokens(self, data: bytes) -> list[int]:
        """`data` tokenized as text. `LlamaModel.tokenize` allocates a buffer of the model's whole
        training context per call (8k ids); a prompt makes one call per turn, so size it to the
        text (no more tokens than bytes, plus the space prefix SentencePiece may add)."""
        size = len(data) + 2
        buffer = (llama_cpp.llama_token * size)()
        count = llama_cpp.llama_tokenize(self.model.vocab, data, len(data), buffer, size, False, False)
        if count < 0:  # cannot happen by the bound above, but llama.cpp says how many it needs
            size = -count
            buffer = (llama_cpp.llama_token * size)()
            count = llama_cpp.llama_tokenize(self.model.vocab, data, len(data), buffer, size, False, False)
            if count < 0:
                raise RuntimeError(f"llama.cpp could not tokenize {len(data)} bytes ({count})")
        return buffer[:count]

    def tokens(self, messages: list[Message]) -> list[int]:
        return self.tokenize(self.segments(messages))


def _drop_prefix(segments: list[Segment], prefix: list[Segment]) -> list[Segment] | None:
    """`segments` after `prefix`, whose last segment may end inside one of them; None when
    `segments` does not start with `prefix`."""
    if not prefix:
        return list(segments)
    head, (last, kind) = prefix[:-1], prefix[-1]
    if len(segments) < len(prefix) or segments[: len(head)] != head:
        return None
    text, same_kind = segments[len(head)]
    if same_kind != kind or not text.startswith(last):
        return None
    rest = [(text[len(last) :], kind)] if len(text) > len(last) else []
    return rest + segments[len(prefix) :]


def shared_continuation(prompt: list[Segment], one: list[Segment], two: list[Segment]) -> list[Segment]:
    """What two renderings `one` and `two` (the same history, different next questions) share after
    `prompt`: the opening of the next turn. Empty when either does not start with `prompt`."""
    rest_one, rest_two = _drop_prefix(one, prompt), _drop_prefix(two, prompt)
    if rest_one is None or rest_two is None:
        return []
    shared: list[Segment] = []
    for a, b in zip(rest_one, rest_two, strict=False):
        if a == b:
            shared.append(a)
            continue
        if a[1] == b[1]:
            common = os.path.commonprefix([a[0], b[0]])
            if common:
                shared.append((common, a[1]))
        break
    return shared
