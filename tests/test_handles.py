"""Model handles: the registry entry picks local or remote once, and the engine must agree.

A local handle runs every engine call on the compute thread; a remote one awaits coroutines on the
event loop. An engine of the other kind would be driven the wrong way (a blocking generator awaited,
or coroutines run on the compute thread), so the load fails with a clear message instead.
"""

from __future__ import annotations

import threading
from typing import ClassVar

import pytest

from core.compute import compute_thread
from core.engines.base import EngineKind
from core.errors import ModelLoadError
from core.events import Done
from core.handles import LoadedModel, LocalModel, RemoteModel
from core.registry import ModelEntry
from core.service import ChatService
from core.settings import CoreSettings
from support.engines import make_service


async def _ask(service: ChatService, conversation: str) -> Done:
    events = [event async for event in service.reply(conversation, "u", "Hi")]
    assert isinstance(events[-1], Done)
    return events[-1]


async def test_a_local_entry_gets_a_local_handle_on_the_compute_thread(tmp_path):
    async with make_service(tmp_path, "Hello there.") as service:
        assert (await _ask(service, "c")).text == "Hello there."
        handle = service.pool._handles[service.settings.default_model]
        assert isinstance(handle, LocalModel)
        engine = service.engines[service.settings.default_model]
        thread_id = await compute_thread().call(threading.get_ident)
        assert engine.thread_ids == {thread_id}  # counted and generated on the compute thread only


async def test_a_remote_entry_refuses_a_local_engine(tmp_path):
    async with make_service(tmp_path) as service:
        service.registry.add("far", urls=["http://127.0.0.1:9/v1"])
        await service.set_model("c", "far")
        with pytest.raises(ModelLoadError) as caught:
            await _ask(service, "c")
        assert "generator engine, but the registry entry is remote" in caught.value.reason
        assert service.pool.loaded == [] and not service.engines["far"].requests
        assert (await _ask(service, "other")).text  # the local default still serves


class _DeclaresRemote:
    """An engine declaring the remote kind, built for a local (GGUF) entry."""

    kind: ClassVar[EngineKind] = "remote"

    def __init__(self, name: str) -> None:
        self.name = name
        self.context_length = 4096


async def test_a_local_entry_refuses_a_remote_engine(tmp_path):
    service = make_service(tmp_path)

    def factory(entry: ModelEntry, _settings: CoreSettings) -> _DeclaresRemote:
        return _DeclaresRemote(entry.name)

    service.pool.factory = factory
    async with service:
        with pytest.raises(ModelLoadError) as caught:
            await _ask(service, "c")
        assert "remote engine, but the registry entry is local" in caught.value.reason
        assert service.pool.loaded == []


def test_the_entry_picks_the_handle():
    local = ModelEntry(name="here", path="/models/here.gguf")
    remote = ModelEntry(name="far", urls=["http://127.0.0.1:9/v1"])
    assert isinstance(LoadedModel.for_entry(local, None), LocalModel)
    assert isinstance(LoadedModel.for_entry(remote, None), RemoteModel)
