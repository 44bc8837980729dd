"""Chat commands, written once for every platform.

A command is one function of (the service, where it was asked, its argument) that returns what to
show. Adapters only parse the argument, decide from the platform what the caller may change
(`Where.may_change`: Discord permissions, Telegram admins), and render a `Shown` (Discord app
commands with autocomplete, Telegram handlers with inline keyboards, the terminal). Every entry of
`COMMANDS` becomes a command on every platform with no adapter code: a new per-conversation
setting is a `ChatService` method plus one function here (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import ChatError

if TYPE_CHECKING:  # the service imports nothing from here; keep it that way at run time
    from core.registry import Persona
    from core.service import ChatService, ServiceStats


@dataclass(frozen=True)
class Where:
    """Where a command was asked, reduced to what the commands need."""

    conversation_id: str
    user_id: str
    scopes: tuple[str, ...] = ()  # where a model default may come from, most specific first
    shared: bool = False  # several people share this conversation (a group, a thread)
    may_change: bool = True  # may change what this conversation shares (model, temperature, history)
    who_may_change: str = "chat admins"  # named in the refusal when `may_change` is False
    ask_may_change: Callable[[], Awaitable[bool]] | None = None  # instead of `may_change`, asked only
    # when a command changes something (Telegram asks getChatMember: not for every /stats)
    model_scope: str | None = None  # where `/model NAME` (and `/persona NAME`) keeps the choice:
    # None = this conversation

    async def allowed(self) -> bool:
        return await self.ask_may_change() if self.ask_may_change is not None else self.may_change


@dataclass(frozen=True)
class Choice:
    """One option a platform can offer as a button or an autocomplete entry."""

    value: str
    label: str
    selected: bool = False


@dataclass(frozen=True)
class Shown:
    """What a command answers: text (plain, no Markdown), and options the platform may offer."""

    text: str
    choices: tuple[Choice, ...] = ()
    choose: str | None = None  # the command a choice runs with its value (e.g. "model")
    public: bool = False  # it changed what everyone here shares: say it to the whole chat
    refused: bool = False  # the caller may not, or the value was bad: nothing changed


CommandFunction = Callable[["ChatService", Where, str], Awaitable[Shown]]
Suggest = Callable[["ChatService"], list[Choice]]


@dataclass(frozen=True)
class Command:
    name: str
    summary: str  # one line, shown in menus and /help
    run: CommandFunction
    argument: str | None = None  # the argument's name; None: the command takes none
    argument_help: str = ""
    suggest: Suggest | None = None  # values to offer while typing the argument (autocomplete)

    @property
    def help_line(self) -> str:
        argument = f" [{self.argument}]" if self.argument else ""
        return f"/{self.name}{argument} – {self.summary}"


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    summary: str,
    *,
    argument: str | None = None,
    argument_help: str = "",
    suggest: Suggest | None = None,
) -> Callable[[CommandFunction], CommandFunction]:
    """Register a chat command for every platform."""

    def register(function: CommandFunction) -> CommandFunction:
        COMMANDS[name] = Command(name, summary, function, argument, argument_help, suggest)
        return function

    return register


async def run_command(service: ChatService, where: Where, name: str, argument: str = "") -> Shown:
    """Run a command by name; a store or model error becomes a refusal the user can read."""
    entry = COMMANDS.get(name)
    if entry is None:
        return Shown(f"Unknown command /{name}. /help lists what I can do.", refused=True)
    try:
        return await entry.run(service, where, argument.strip())
    except ChatError as error:
        return Shown(f"⚠️ {error.user_message}", refused=True)


def _refusal(where: Where, what: str) -> Shown:
    return Shown(f"Only {where.who_may_change} can {what} here (everyone here shares it).", refused=True)


def model_choices(service: ChatService, current: str | None = None) -> list[Choice]:
    return [
        Choice(
            entry.name,
            f"{entry.name} – {entry.description}" if entry.description else entry.name,
            entry.name == current,
        )
        for entry in service.models()
    ]


# -- the commands -------------------------------------------------------------------------------
@command(
    "model",
    "show the models, or choose one for this conversation",
    argument="name",
    argument_help="Model to use (leave empty to list the models)",
    suggest=model_choices,
)
async def model(service: ChatService, where: Where, name: str) -> Shown:
    if name:
        if not await where.allowed():
            return _refusal(where, "change the model")
        if where.model_scope is not None:
            entry = await service.set_scope_default(where.model_scope, name)
        else:
            entry = await service.set_model(where.conversation_id, name)
        return Shown(f"Model here is now {entry.name}.", public=where.shared)
    current = await service.current_model(where.conversation_id, where.scopes)
    choices = tuple(model_choices(service, current))
    lines = [f"Model here: {current}", "", *(f"• {choice.label}" for choice in choices)]
    if where.shared and (where.ask_may_change is not None or not where.may_change):
        lines += ["", f"Only {where.who_may_change} can change it."]
    return Shown("\n".join(lines), choices=choices, choose="model")


async def set_scope_model(service: ChatService, scope: str, name: str, *, allowed: bool, who: str) -> Shown:
    """A default for everyone in a scope (a channel, a server, a group): the platform says who may."""
    if not allowed:
        return Shown(f"Only {who} can change the default model here.", refused=True)
    try:
        entry = await service.set_scope_default(scope, name)
    except ChatError as error:
        return Shown(f"⚠️ {error.user_message}", refused=True)
    return Shown(
        f"The default model here is now {entry.name} (conversations that picked their own keep it).",
        public=True,
    )


def _persona_label(persona: Persona) -> str:
    about = persona.description or persona.system_prompt
    about = " ".join(about.split())
    return f"{persona.name} – {about[:60] + '…' if len(about) > 60 else about}"


def persona_choices(service: ChatService, current: str | None = None) -> list[Choice]:
    """ "default" (the bot's own system prompt), then every persona of the models file."""
    return [
        Choice("default", "default – the bot's own system prompt", current is None),
        *(Choice(p.name, _persona_label(p), p.name == current) for p in service.personas()),
    ]


def _persona_set_text(persona: Persona | None, model_here: str) -> str:
    if persona is None:
        return f"No persona here now: the bot's own system prompt (model {model_here})."
    return f"Persona here is now {persona.name} (model {model_here})."


@command(
    "persona",
    "show the personas, or choose this conversation's (its system prompt)",
    argument="name",
    argument_help="Persona to use, or 'default' (leave empty to list them)",
    suggest=persona_choices,
)
async def persona(service: ChatService, where: Where, name: str) -> Shown:
    if name:
        if not await where.allowed():
            return Shown(f"Only {where.who_may_change} can choose the persona here.", refused=True)
        if where.model_scope is not None:
            chosen = await service.set_scope_persona(where.model_scope, name)
        else:
            chosen = await service.set_persona(where.conversation_id, name)
        model_here = await service.current_model(where.conversation_id, where.scopes)
        return Shown(_persona_set_text(chosen, model_here), public=where.shared)
    here = await service.choose(where.conversation_id, where.scopes)
    choices = tuple(persona_choices(service, here.persona.name if here.persona else None))
    current = here.persona.name if here.persona else "default (the bot's own system prompt)"
    lines = [f"Persona here: {current}, model {here.model}", "", *(f"• {choice.label}" for choice in choices)]
    if here.notice:
        lines += ["", here.notice]
    if where.ask_may_change is not None or not where.may_change:
        lines += ["", f"Only {where.who_may_change} can change it."]
    return Shown("\n".join(lines), choices=choices, choose="persona")


async def set_scope_persona(service: ChatService, scope: str, name: str, *, allowed: bool, who: str) -> Shown:
    """A default persona for everyone in a scope (a Discord channel): the platform says who may."""
    if not allowed:
        return Shown(f"Only {who} can change the default persona here.", refused=True)
    try:
        chosen = await service.set_scope_persona(scope, name)
    except ChatError as error:
        return Shown(f"⚠️ {error.user_message}", refused=True)
    what = f"persona {chosen.name}" if chosen is not None else "the bot's own system prompt"
    return Shown(
        f"The default here is now {what} (conversations that picked their own persona keep it).", public=True
    )


@command("reset", "forget this conversation")
async def reset(service: ChatService, where: Where, _: str) -> Shown:
    if not await where.allowed():
        return _refusal(where, "reset this conversation")
    removed = await service.reset(where.conversation_id)
    return Shown(f"🧹 Forgot this conversation ({removed} messages).", public=where.shared)


@command(
    "temperature",
    "show or set how varied answers are here (0–2, or default)",
    argument="value",
    argument_help="0 (always the same answer) to 2 (most varied), or 'default'",
)
async def temperature(service: ChatService, where: Where, value: str) -> Shown:
    if value:
        if not await where.allowed():
            return _refusal(where, "change the temperature")
        await service.set_temperature(where.conversation_id, value)
    here = await service.choose(where.conversation_id, where.scopes)
    current = await service.current_temperature(where.conversation_id, here.model, persona=here.persona)
    if value:
        return Shown(f"Temperature here is now {current:g}.", public=where.shared)
    return Shown(f"Temperature here: {current:g} (0 = always the same answer, 2 = most varied)")


@command("stats", "queue, speed and loaded models")
async def stats(service: ChatService, where: Where, _: str) -> Shown:
    from core.feedback_report import stats_lines as feedback_lines  # one GROUP BY: 👍-rate, 🔁 per file

    numbers = service.stats()
    wait = service.estimated_wait_s(numbers.queue_depth + 1) if numbers.queue_depth else None
    here = await service.choose(where.conversation_id, where.scopes)
    temperature_here = await service.current_temperature(
        where.conversation_id, here.model, persona=here.persona
    )
    feedback_here = await feedback_lines(service.history)
    persona_here = f", persona {here.persona.name}" if here.persona else ""
    return Shown(
        "\n".join(
            [
                f"Model here: {here.model}, temperature {temperature_here:g}{persona_here}",
                *stats_lines(numbers, wait),
                *feedback_here,
            ]
        )
    )


def stats_lines(stats: ServiceStats, wait_s: float | None) -> list[str]:
    """Queue, expected wait, models, speed, and problems."""
    speed = f"{stats.tokens_per_s:.1f} tokens/s" if stats.tokens_per_s else "no replies yet"
    lines = [
        f"Queue: {stats.running} running, {stats.queue_depth} waiting"
        + (f" (a new question waits about {wait_s:.0f} s)" if wait_s else ""),
        f"Loaded models: {', '.join(stats.loaded_models) or 'none'}",
        f"Speed (recent replies): {speed}",
        f"Replies since start: {stats.replies}",
    ]
    if stats.registry_problem:
        lines.append(f"⚠️ models file problem (the last good version is in use): {stats.registry_problem}")
    return lines


@command(
    "forget",
    "delete everything stored about you (asks first)",
    argument="confirm",
    argument_help="'yes' to delete at once",
)
async def forget(service: ChatService, where: Where, confirm: str) -> Shown:
    """Everyone may: it deletes only what is about the caller (docs/privacy.md)."""
    own = None if where.shared else where.conversation_id
    if confirm.lower() not in {"yes", "y"}:
        settings = ", and this conversation with its settings" if own else ""
        return Shown(
            "This deletes everything lorabot stores about you: the questions you asked (here and in "
            f"every other chat with this bot), the answers to them, and your ratings{settings}. "
            "It can't be undone. Delete it?",
            choices=(Choice("yes", "Yes, delete it"),),
            choose="forget",
        )
    forgotten = await service.forget_user(where.user_id, own)
    return Shown(
        f"🧹 Deleted {forgotten.turns} question(s) with their answers and {forgotten.ratings} rating(s). "
        "Nothing else about you is stored."
    )


@command(
    "feedback",
    "show or choose whether your 👍/👎 are kept to improve the model (on|off)",
    argument="choice",
    argument_help="'off': keep nothing of your ratings and leave your chats out of training; 'on'",
)
async def feedback(service: ChatService, where: Where, choice: str) -> Shown:
    if not service.settings.feedback:
        return Shown("Feedback is off for this whole bot: no ratings are stored and nothing is exported.")
    choice = choice.lower()
    if choice in {"on", "off"}:
        await service.set_feedback(where.user_id, choice == "on")
    elif choice:
        return Shown("Use /feedback on or /feedback off.", refused=True)
    on = service.feedback_on_for(where.user_id)
    text = (
        "Your 👍/👎 are kept (with a pseudonym, never your name) to train better models. "
        "/feedback off stops it."
        if on
        else "Your ratings are not kept and the conversations you ask in are left out of every export. "
        "/feedback on to change your mind."
    )
    choices = (Choice("on", "On", selected=on), Choice("off", "Off", selected=not on))
    return Shown(text, choices=choices, choose="feedback")


def help_lines() -> list[str]:
    """One line per command, for every platform's /help."""
    return [entry.help_line for entry in COMMANDS.values()]
