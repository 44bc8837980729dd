"""Personas (docs/personas.md): the registry, the service and `/persona` on the real store, and
the real model's prompt and KV cache when conversations' personas differ."""

from __future__ import annotations

# isort: off
import core.compute  # noqa: F401  first: it sets OpenMP's wait policy before llama_cpp loads OpenMP

# isort: on
import threading

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from core import schema
from core.commands import Where, run_command
from core.engines.base import GenerationRequest, GenerationStats
from core.engines.llama import LlamaEngine
from core.errors import PersonaModelMissing, UnknownPersona
from core.events import Done, Notice
from core.history import ConversationStore
from core.registry import ModelEntry, ModelRegistry, RegistryError
from core.service import ChatService
from core.settings import load_core_settings
from support.engines import make_service

PIRATE = "You are a pirate. Answer like one."
ROBOT = "You are a robot. Answer in short beeps."


def system_prompt_of(service: ChatService, model: str | None = None) -> str:
    """The system prompt of the newest request the (scripted) engine of `model` got."""
    engine = service.engines[model or service.settings.default_model]  # type: ignore[attr-defined]
    first = engine.requests[-1].messages[0]
    assert first["role"] == "system"
    return first["content"]


async def ask(service: ChatService, conversation: str, text: str = "hi", **kw) -> list:
    return [event async for event in service.reply(conversation, "u1", text, **kw)]


@pytest.fixture
async def service(tmp_path):
    service = make_service(tmp_path, "ok", models={"other": "from other"}, temperature=0.7)
    service.registry.add_persona("pirate", PIRATE, temperature=1.2, description="talks like a pirate")
    service.registry.add_persona("robot", ROBOT, model="other")
    await service.start()
    yield service
    await service.close()


# -- the registry and its file -------------------------------------------------------------------
def test_personas_are_kept_in_the_models_file_next_to_the_models(tmp_path, embedded_gguf):
    path = tmp_path / "models.toml"
    path.write_text('# my models\n[models.tune]\npath = "x.gguf"  # the tune\n', encoding="utf-8")
    registry = ModelRegistry(path)
    registry.add("other", embedded_gguf)
    registry.add_persona("pirate", PIRATE)
    registry.add_persona("robot", ROBOT, model="other", temperature=0.3)
    assert [(p.name, p.model, p.temperature) for p in registry.personas()] == [
        ("pirate", None, None),
        ("robot", "other", 0.3),
    ]
    text = path.read_text(encoding="utf-8")
    assert "# my models" in text and "# the tune" in text and "[personas.robot]" in text
    assert registry.persona("robot").system_prompt == ROBOT
    registry.remove("other")  # the persona stays, naming a model no longer there
    assert registry.personas_using("other") == ["robot"]
    registry.remove_persona("pirate")
    assert [p.name for p in ModelRegistry(path).personas()] == ["robot"]
    assert "# the tune" in path.read_text(encoding="utf-8")
    with pytest.raises(UnknownPersona, match="Unknown persona 'pirate'. Personas: robot."):
        registry.persona("pirate")
    with pytest.raises(UnknownPersona):
        registry.remove_persona("pirate")


def test_bad_personas_are_refused_and_a_bad_entry_keeps_the_last_good_file(tmp_path):
    registry = ModelRegistry(tmp_path / "models.toml")
    with pytest.raises(RegistryError, match="unknown model 'nope'"):
        registry.add_persona("p", PIRATE, model="nope")
    for name, prompt in (("default", PIRATE), ("ok", "  "), ("bad name", PIRATE)):
        with pytest.raises(ValidationError):
            registry.add_persona(name, prompt)
    with pytest.raises(ValidationError):
        registry.add_persona("hot", PIRATE, temperature=5)
    registry.add_persona("pirate", PIRATE)
    assert [p.name for p in registry.personas()] == ["pirate"]  # read, as a running bot does
    registry.path.write_text(
        registry.path.read_text() + '\n[personas.broken]\nmodel = "x"\n', encoding="utf-8"
    )
    assert [p.name for p in registry.personas()] == ["pirate"]  # the last good version
    assert "[personas.broken] (line" in registry.problem and "system_prompt" in registry.problem


async def test_a_v5_database_is_migrated_to_v6_and_keeps_its_model_choices(store_url):
    store = ConversationStore(store_url)
    async with store._writer.begin() as db:  # exactly what a v5 lorabot created
        for step in schema.MIGRATIONS[:5]:
            await step(db)
        await db.execute(sa.insert(schema.schema_version).values(version=5))
        if db.dialect.name == "sqlite":
            await db.exec_driver_sql("PRAGMA user_version = 5")
        await db.execute(sa.insert(schema.model_choice).values(key="c1", model="other"))
    await store.engine.dispose()
    migrated = await ConversationStore.open(store_url)
    try:
        async with migrated.engine.connect() as db:
            assert await schema.stored_version(db) == schema.SCHEMA_VERSION == 6
        assert await migrated.choices(["c1", "c2"]) == {"c1": ("other", None)}
        await migrated.set_persona_choice("c1", "pirate")
        await migrated.set_persona_choice("scope:s", "robot")
        assert await migrated.choices(["c1", "scope:s"]) == {
            "c1": ("other", "pirate"),
            "scope:s": (None, "robot"),
        }
        await migrated.set_persona_choice("c1", "robot", clear_model=True)  # one write: both
        assert await migrated.choices(["c1"]) == {"c1": (None, "robot")}
        await migrated.set_persona_choice("c1", None)
        assert await migrated.choices(["c1"]) == {}
    finally:
        await migrated.close()


# -- the service: prompt, model, temperature ---------------------------------------------------
async def test_a_personas_system_prompt_replaces_the_global_one_for_its_conversation(service):
    await ask(service, "c1")
    assert system_prompt_of(service) == service.settings.system_prompt
    await service.set_persona("c1", "pirate")
    await ask(service, "c1")
    assert system_prompt_of(service) == PIRATE
    engine = service.engines["smollm2-135m"]
    assert engine.requests[-1].temperature == 1.2  # the persona's temperature
    await ask(service, "c2")  # another conversation: the global prompt
    assert system_prompt_of(service) == service.settings.system_prompt
    await service.set_temperature("c1", 0.2)  # the conversation's own /temperature wins
    await ask(service, "c1")
    assert engine.requests[-1].temperature == 0.2 and system_prompt_of(service) == PIRATE
    assert await service.set_persona("c1", "default") is None
    await ask(service, "c1")
    assert system_prompt_of(service) == service.settings.system_prompt


async def test_a_personas_model_is_used_until_a_later_model_choice(service):
    await service.set_model("c1", "smollm2-135m")
    await service.set_persona("c1", "robot")  # after the /model: the persona's model
    assert await service.current_model("c1") == "other"
    assert (await ask(service, "c1"))[-1].text == "from other"
    assert system_prompt_of(service, "other") == ROBOT
    await service.set_model("c1", "smollm2-135m")  # after the persona: the /model
    assert (await ask(service, "c1"))[-1].text == "ok"
    assert system_prompt_of(service) == ROBOT  # the persona's prompt stays
    await service.set_persona("c1", "pirate")  # no model: the /model choice stays
    assert await service.current_model("c1") == "smollm2-135m"


async def test_a_scope_default_persona_applies_where_a_conversation_has_none(service):
    await service.set_scope_persona("channel", "robot")
    assert (await service.current_persona("c1", ("channel", "server"))).name == "robot"
    assert await service.current_model("c1", ("channel", "server")) == "other"
    assert await service.current_persona("c1") is None  # elsewhere
    await service.set_persona("c1", "pirate")  # its own wins, and the channel persona's model goes with it
    assert (await service.current_persona("c1", ("channel",))).name == "pirate"
    assert await service.current_model("c1", ("channel",)) == "smollm2-135m"
    await service.set_model(
        "c2", "smollm2-135m"
    )  # a conversation's own /model wins over the channel's persona
    assert await service.current_model("c2", ("channel",)) == "smollm2-135m"
    assert (await service.current_persona("c2", ("channel",))).name == "robot"


async def test_an_unknown_persona_is_refused_and_nothing_changes(service):
    await service.set_persona("c1", "pirate")
    with pytest.raises(UnknownPersona):
        await service.set_persona("c1", "ninja")
    shown = await run_command(service, Where("c1", "alice"), "persona", "ninja")
    assert shown.refused and "Unknown persona 'ninja'" in shown.text and "pirate, robot" in shown.text
    assert (await service.current_persona("c1")).name == "pirate"


async def test_a_persona_whose_model_was_removed(service):
    await service.set_persona("c1", "robot")
    service.registry.remove("other")
    # choosing it now is refused with a clear reason; the conversation keeps what it had
    with pytest.raises(PersonaModelMissing):
        await service.set_persona("c2", "robot")
    shown = await run_command(service, Where("c2", "alice"), "persona", "robot")
    assert shown.refused and "'other', which is no longer registered" in shown.text
    assert await service.current_persona("c2") is None
    # a conversation that chose it before still gets its prompt, from the default model, and is told
    events = await ask(service, "c1")
    notices = [event.text for event in events if isinstance(event, Notice)]
    assert notices and "model other is no longer registered" in notices[0] and "smollm2-135m" in notices[0]
    assert events[-1].text == "ok" and system_prompt_of(service) == ROBOT
    assert "no longer registered" in (await run_command(service, Where("c1", "alice"), "persona")).text
    # nothing was lost: registered again, the persona answers with its model again
    service.registry.add("other", service.registry.get("smollm2-135m").path)
    assert (await ask(service, "c1"))[-1].text == "from other"
    assert not [event for event in await ask(service, "c1") if isinstance(event, Notice)]


async def test_a_removed_persona_falls_back_to_the_default_prompt_and_its_choice_is_kept(service):
    await service.set_persona("c1", "pirate")
    service.registry.remove_persona("pirate")
    await ask(service, "c1")
    assert system_prompt_of(service) == service.settings.system_prompt
    service.registry.add_persona("pirate", PIRATE)
    await ask(service, "c1")
    assert system_prompt_of(service) == PIRATE


async def test_forget_drops_a_private_conversations_persona(service):
    await service.set_persona("dm", "pirate")
    await service.set_scope_persona("telegram:1", "robot")  # a Telegram private chat: kept as its scope's
    await service.set_scope_persona("group", "pirate")
    await service.forget_user("alice", "dm")
    await service.forget_user("alice", "telegram:1")
    assert await service.current_persona("dm") is None
    assert await service.current_persona("telegram:1", "telegram:1") is None
    assert await service.current_model("telegram:1", "telegram:1") == "smollm2-135m"
    assert (await service.current_persona("c", "group")).name == "pirate"  # no one's own: kept


# -- /persona ------------------------------------------------------------------------------------
async def test_persona_command_lists_sets_and_goes_back_to_default(service):
    alice = Where("c1", "alice")
    shown = await run_command(service, alice, "persona")
    assert shown.choose == "persona" and not shown.refused
    assert [(c.value, c.selected) for c in shown.choices] == [
        ("default", True),
        ("pirate", False),
        ("robot", False),
    ]
    assert shown.text.startswith("Persona here: default") and "pirate – talks like a pirate" in shown.text
    shown = await run_command(service, alice, "persona", "robot")
    assert shown.text == "Persona here is now robot (model other)." and not shown.public
    listed = await run_command(service, alice, "persona")
    assert [c.value for c in listed.choices if c.selected] == ["robot"]
    assert (await run_command(service, alice, "stats")).text.startswith(
        "Model here: other, temperature 0.7, persona robot"
    )
    shown = await run_command(service, alice, "persona", "default")
    assert shown.text.startswith("No persona here now")
    assert await service.current_persona("c1") is None


async def test_persona_in_a_shared_conversation_only_for_those_who_may(service):
    member = Where("group", "bob", shared=True, may_change=False, who_may_change="chat admins")
    admin = Where("group", "ann", shared=True, may_change=True, model_scope="chat")
    shown = await run_command(service, member, "persona", "pirate")
    assert shown.refused and shown.text == "Only chat admins can choose the persona here."
    assert "Only chat admins can change it." in (await run_command(service, member, "persona")).text
    assert await service.current_persona("group", ("chat",)) is None
    shown = await run_command(service, admin, "persona", "pirate")
    assert shown.public and shown.text.startswith("Persona here is now pirate")
    assert (await service.current_persona("group", ("chat",))).name == "pirate"  # kept for the chat


# -- the real model: the prompt it reads, and its KV cache --------------------------------------
def load(path, cache_mb: int, slots: int = 1) -> LlamaEngine:
    settings = load_core_settings(kv_slots=slots, parallel=1, context_length=1024, prompt_cache_mb=cache_mb)
    return LlamaEngine.load(ModelEntry(name="smol", path=path), settings)


@pytest.fixture(scope="module")
def cached(embedded_gguf):
    engine = load(embedded_gguf, 64)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def fresh(embedded_gguf):
    """No prompt cache and a slot of its own per call (forgotten after): every prompt read whole."""
    engine = load(embedded_gguf, 0)
    yield engine
    engine.close()


def run(engine, conversation, messages, max_new_tokens=20):
    stats = GenerationStats()
    request = GenerationRequest(
        "smol", conversation, messages, max_new_tokens=max_new_tokens, temperature=0.0
    )
    return "".join(engine.generate(request, threading.Event(), stats)), stats


def full_read(engine, messages):
    engine.forget("fresh")
    reply, stats = run(engine, "fresh", messages)
    assert stats.reused_tokens == 0
    engine.forget("fresh")
    return reply


def system_prefix(engine, system: str) -> int:
    """How many prompt tokens two conversations with this system prompt surely share."""
    one = engine.prompt_tokens([{"role": "system", "content": system}, {"role": "user", "content": "a"}])
    two = engine.prompt_tokens([{"role": "system", "content": system}, {"role": "user", "content": "b"}])
    return next(i for i, (x, y) in enumerate(zip(one, two, strict=False)) if x != y)


async def test_the_real_model_reads_the_personas_system_prompt(tmp_path, embedded_gguf):
    seen: list[tuple[LlamaEngine, list, list[int]]] = []
    begin = LlamaEngine.begin

    def recording(self, request, stats):
        seen.append((self, request.messages, self.prompt_tokens(request.messages)))
        return begin(self, request, stats)

    settings = load_core_settings(data_dir=tmp_path / "data", max_new_tokens=8, temperature=0.0)
    service = ChatService(settings)
    service.registry.add_persona("pirate", PIRATE)
    LlamaEngine.begin = recording  # type: ignore[method-assign]
    try:
        async with service:
            await service.set_persona("c1", "pirate")
            events = await ask(service, "c1", "Who are you?")
            assert isinstance(events[-1], Done)
            engine, messages, tokens = seen[-1]
            assert messages[0] == {"role": "system", "content": PIRATE}
            rendered = engine.render(messages)
            assert PIRATE in rendered and settings.system_prompt not in rendered
            question = {"role": "user", "content": "Who are you?"}
            # the tokens it read are those of the persona's prompt and the question, nothing else
            assert tokens == engine.prompt_tokens([{"role": "system", "content": PIRATE}, question])
            assert tokens != engine.prompt_tokens(
                [{"role": "system", "content": settings.system_prompt}, question]
            )
            await ask(service, "c2", "Who are you?")  # no persona: the global prompt
            assert seen[-1][1][0] == {"role": "system", "content": settings.system_prompt}
    finally:
        LlamaEngine.begin = begin  # type: ignore[method-assign]


def common(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def slot_of(engine: LlamaEngine, conversation: str):
    return next(slot for slot in engine.slots if slot.conversation_id == conversation)


def test_a_conversation_that_changes_persona_keeps_only_what_the_prompts_share(cached):
    """Its slot holds the pirate prompt; the robot turn keeps only the tokens both renderings share
    (`<|im_start|>system\nYou are a`), and what the slot holds afterwards is the robot prompt.
    (Greedy text after a partial reuse may differ from a full read's in its last digits, with any
    prompt: so the check is on the tokens whose KV cells are kept.)"""
    pirate = [{"role": "system", "content": PIRATE}, {"role": "user", "content": "Tell me about ships."}]
    first, _ = run(cached, "a", pirate)
    held = list(slot_of(cached, "a").tokens)
    robot = [{"role": "system", "content": ROBOT}, *pirate[1:]]
    robot += [{"role": "assistant", "content": first}, {"role": "user", "content": "And boats?"}]
    prompt = cached.prompt_tokens(robot)
    _, stats = run(cached, "a", robot)
    assert 0 < stats.reused_tokens <= common(held, prompt) < system_prefix(cached, PIRATE)
    assert slot_of(cached, "a").tokens[: len(prompt)] == prompt
    # and back: the pirate prompt is read again, not taken from anywhere
    again = [*pirate, {"role": "assistant", "content": first}, {"role": "user", "content": "More?"}]
    _, stats = run(cached, "a", again)
    assert stats.reused_tokens < system_prefix(cached, PIRATE)


def test_the_host_prompt_cache_gives_no_conversation_another_personas_state(cached, fresh):
    """A and B ask the same question under two personas with one slot: B never takes A's slot as a
    twin nor A's saved state, and A gets its own pirate state back, answering as a full read."""
    question = {"role": "user", "content": "What is the sea?"}
    a = [{"role": "system", "content": PIRATE}, question]
    b = [{"role": "system", "content": ROBOT}, question]
    reply_a, _ = run(cached, "pa", a)
    restored = cached.prompt_cache.restored
    _, stats_b = run(cached, "pb", b)  # the only slot held A's pirate prompt: saved for A, not reused
    assert stats_b.reused_tokens < system_prefix(cached, ROBOT)
    assert "pa" in cached.prompt_cache and cached.prompt_cache.restored == restored
    assert slot_of(cached, "pb").tokens[: stats_b.prompt_tokens] == cached.prompt_tokens(b)
    a += [{"role": "assistant", "content": reply_a}, {"role": "user", "content": "Why?"}]
    again_a, stats_a = run(cached, "pa", a)  # A comes back: its own pirate state, from host memory
    assert cached.prompt_cache.restored == restored + 1
    assert stats_a.reused_tokens >= len(cached.prompt_tokens(a[:2]))
    assert again_a == full_read(fresh, a)
    # a new conversation with the robot persona and A's very history: nothing of A's is reused
    c = [{"role": "system", "content": ROBOT}, *a[1:]]
    _, stats_c = run(cached, "pc", c)
    assert stats_c.reused_tokens < system_prefix(cached, ROBOT)
    assert slot_of(cached, "pc").tokens[: stats_c.prompt_tokens] == cached.prompt_tokens(c)


# -- lorabot personas ------------------------------------------------------------------------------
def test_lorabot_personas_add_list_remove(tmp_path):
    from test_cli import lorabot

    added = lorabot(tmp_path, "personas", "add", "pirate", "--prompt", PIRATE, "--temperature", "0.9")
    assert added.returncode == 0 and "Added persona pirate" in added.stdout
    refused = lorabot(tmp_path, "personas", "add", "robot", "--prompt", ROBOT, "--model", "nope")
    assert refused.returncode == 2 and "unknown model 'nope'" in refused.stdout
    listed = lorabot(tmp_path, "personas", "list")
    assert listed.returncode == 0 and "pirate" in listed.stdout and "You are a pirate" in listed.stdout
    assert "robot" not in listed.stdout
    removed = lorabot(tmp_path, "personas", "remove", "pirate")
    assert removed.returncode == 0 and "Removed persona pirate" in removed.stdout
    gone = lorabot(tmp_path, "personas", "remove", "pirate")
    assert gone.returncode == 2 and "Unknown persona 'pirate'" in gone.stdout


async def test_persona_in_the_terminal(service):
    import io

    from bots.console import ConsoleChat

    out = io.StringIO()
    chat = ConsoleChat(service, out=out, user="alice")
    await chat.command("/persona pirate")
    assert "Persona here is now pirate (model smollm2-135m)." in out.getvalue()
    await chat.command("/help")
    assert "/persona [name] – show the personas" in out.getvalue()
    assert (await service.current_persona("console:alice")).name == "pirate"


async def test_through_the_service_each_persona_keeps_its_own_cached_prefix(tmp_path):
    """The whole path (compute thread, reading ahead, one KV slot, the host prompt cache): two
    conversations of two personas take turns; each gets its own state back, never the other's."""
    seen: list[tuple[LlamaEngine, str, list[int]]] = []
    begin = LlamaEngine.begin

    def recording(self, request, stats):
        seen.append((self, request.conversation_id, self.prompt_tokens(request.messages)))
        return begin(self, request, stats)

    settings = load_core_settings(
        data_dir=tmp_path / "data",
        max_new_tokens=12,
        temperature=0.0,
        kv_slots=1,
        parallel=1,
        prompt_cache_mb=64,
    )
    service = ChatService(settings)
    service.registry.add_persona("pirate", PIRATE)
    service.registry.add_persona("robot", ROBOT)
    LlamaEngine.begin = recording  # type: ignore[method-assign]
    try:
        async with service:
            await service.set_persona("a", "pirate")
            await service.set_persona("b", "robot")
            reused: dict[str, list[int]] = {"a": [], "b": []}
            for turn in range(2):
                for conversation in ("a", "b"):
                    done = (await ask(service, conversation, f"Question {turn}: what is the sea?"))[-1]
                    assert isinstance(done, Done)
                    reused[conversation].append(int(done.extras["reused_tokens"]))
            engine = seen[-1][0]
            prompts = {conversation: [p for _, c, p in seen if c == conversation] for conversation in "ab"}
            assert (
                prompts["a"][0][: system_prefix(engine, PIRATE)]
                == engine.prompt_tokens(
                    [{"role": "system", "content": PIRATE}, {"role": "user", "content": "x"}]
                )[: system_prefix(engine, PIRATE)]
            )
            # b's first turn found a's pirate prompt in the only slot: it kept no more than they share
            assert reused["b"][0] <= common(prompts["a"][0], prompts["b"][0]) < system_prefix(engine, ROBOT)
            # each second turn got its own first turn back (prompt and answer) from host memory
            for conversation in "ab":
                assert reused[conversation][1] >= len(prompts[conversation][0])
            assert engine.prompt_cache.restored >= 2
    finally:
        LlamaEngine.begin = begin  # type: ignore[method-assign]
