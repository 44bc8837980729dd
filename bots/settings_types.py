"""Setting types the adapters share."""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import BeforeValidator
from pydantic_settings import NoDecode


def _split_ids(value: object) -> object:
    """'1, 2 3' or a JSON list '[1, 2]' from the environment; other values pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part for part in text.replace(",", " ").split() if part]
    return value


IdSet = Annotated[frozenset[int], NoDecode, BeforeValidator(_split_ids)]
"""A set of platform ids (users, chats, guilds, roles), written comma- or space-separated."""
