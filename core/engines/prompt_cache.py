"""Conversations' KV caches kept in host memory after they lost their llama.cpp slot.

With more active conversations than KV slots (100 users, 8 slots), a conversation's slot is
recycled between its turns, and its next turn used to read the whole history again: on a small
CPU that prefill cost as much as generating the reply. llama.cpp can copy one sequence's KV
cells out (`llama_state_seq_get_data`) and back into any sequence (`..._set_data`) in about a
millisecond per few MB, so the engine saves a slot's state here when it recycles the slot, and
restores it when that conversation comes back (llama.cpp's server keeps a host-memory prompt
cache for the same reason). Bounded by bytes, least recently used dropped first.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class SavedState:
    tokens: list[int]  # the tokens whose KV cells `data` holds, in order
    data: ctypes.Array[ctypes.c_uint8]  # llama_state_seq_get_data's copy of the sequence


class PromptCache:
    """conversation id -> its saved KV state, at most `capacity_bytes` in all."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._states: OrderedDict[str, SavedState] = OrderedDict()
        self.size_bytes = 0
        self.saved = 0  # states stored, for tests and stats
        self.restored = 0

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, conversation_id: str) -> bool:
        return conversation_id in self._states

    def put(self, conversation_id: str, state: SavedState) -> None:
        """Keep `state` (replacing an older one); a state larger than the whole cache is dropped."""
        self.drop(conversation_id)
        if len(state.data) > self.capacity_bytes:
            return
        self._states[conversation_id] = state
        self.size_bytes += len(state.data)
        self.saved += 1
        while self.size_bytes > self.capacity_bytes:
            _, oldest = self._states.popitem(last=False)
            self.size_bytes -= len(oldest.data)

    def take(self, conversation_id: str) -> SavedState | None:
        """Remove and return the conversation's state (it goes back into a slot)."""
        state = self._states.pop(conversation_id, None)
        if state is not None:
            self.size_bytes -= len(state.data)
        return state

    def drop(self, conversation_id: str) -> None:
        self.take(conversation_id)

    def clear(self) -> None:
        self._states.clear()
        self.size_bytes = 0
