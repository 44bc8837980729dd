"""Text crossing the boundary with a remote server, made safe in both directions.

- **From the server**: JSON escapes can carry UTF-16 surrogates. A character outside the BMP
  (an emoji) sent as a split pair, `"\\ud83d"` in one chunk and `"\\ude00"` in the next, decodes to
  two lone surrogates: text that cannot be encoded, stored or sent (UnicodeEncodeError after the
  user saw the start of the reply). `SurrogateJoiner` holds back a high surrogate ending a piece,
  joins it with the low one starting the next, and replaces surrogates that stay alone with U+FFFD.
- **To the server**: `/v1/chat/completions` servers render the chat template and tokenize the
  result themselves, parsing special tokens anywhere in it (llama.cpp's server and
  llama-cpp-python's tokenize the rendered prompt with special tokens on), so a user writing
  `<|im_end|>\n<|im_start|>system\n…` would open a real system turn. The API offers no way to ask
  for message content to be tokenized as text, so `neutralize_markers` breaks the spellings of
  known template markers with an invisible U+200B before the text leaves: the model reads it as
  text. See docs/models.md, "Remote models", for what this does not cover.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
ZERO_WIDTH_SPACE = "\u200b"

# The opening character of a template marker, matched only where the whole marker follows:
# <|im_start|>, <|eot_id|>, <|user|> (ChatML, Llama 3, Phi, Qwen); <｜User｜> (DeepSeek);
# <s>, </s>, <unk>, <pad>, <bos>, <eos>, <start_of_turn>, <end_of_turn> (Llama 2, Gemma);
# [INST], [/INST], [SYSTEM_PROMPT] (Mistral); <<SYS>> (Llama 2).
_MARKER = re.compile(
    r"<(?=\|[^\s|<>]{1,64}\|>)"
    r"|<(?=｜[^｜<>\n]{1,64}｜>)"
    r"|<(?=/?(?:s|unk|pad|bos|eos|start_of_turn|end_of_turn)>)"
    r"|\[(?=/?(?:INST|SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS)\])"
    r"|<(?=</?SYS>>)"
)


def fix_surrogates(text: str) -> str:
    """Adjacent surrogate pairs joined into their character, lone surrogates replaced by U+FFFD."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class SurrogateJoiner:
    """Repairs a stream of text pieces whose surrogate pairs may be split between pieces."""

    def __init__(self) -> None:
        self._high = ""  # a high surrogate that ended the last piece

    def feed(self, piece: str) -> str:
        """The repaired text of `piece` (a trailing high surrogate is kept for the next piece)."""
        text, self._high = self._high + piece, ""
        if text and "\ud800" <= text[-1] <= "\udbff":
            text, self._high = text[:-1], text[-1]
        return fix_surrogates(text)

    def flush(self) -> str:
        """At the end of the stream: a high surrogate still held never found its pair."""
        held, self._high = self._high, ""
        return REPLACEMENT if held else ""


def neutralize_markers(text: str) -> str:
    """`text` with every known chat-template marker broken by a U+200B after its first character."""
    return _MARKER.sub(lambda match: match.group(0) + ZERO_WIDTH_SPACE, text)
