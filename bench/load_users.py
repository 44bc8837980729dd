"""Simulated users for `lorabot bench load`: who asks what where, and watching their answers.

A `World` wraps one fake platform server (bench/fakes): it creates the chats, posts a user's
message the way the platform would deliver it, and attributes the bot's messages to the
question they answer. The `Tracker` follows every question until its answer is final:

- *status*: the bot's message still shows a queue or typing status ("⏳ …", "✍️ …");
- *refused*: a "⚠️ … busy / one at a time / too fast" text (the bot told the user to wait);
- *answered*: the text on screen equals, letter for letter (whitespace, mention defusing and
  code-fence markers aside), the answer the bot stored as finished in its history database for
  that question. This is exact: a reply that stopped half way never counts, however long it
  has been unchanged;
- *error*: another "⚠️" text that did not change for a few seconds.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.engine import QUESTIONS as ENGINE_QUESTIONS

QUESTIONS = ENGINE_QUESTIONS + [
    "What is a good name for a grey cat?",
    "How many legs does a spider have?",
    "Give me three ideas for a rainy afternoon.",
    "What does a compiler do?",
    "Suggest a healthy breakfast.",
    "Why do leaves change colour in autumn?",
    "What is the capital of Japan?",
    "Tell me a joke about computers.",
    "How do I boil an egg?",
    "What is photosynthesis, in two sentences?",
]

STATUS_MARKERS = ("⏳", "✍")  # queue position, "writing…" (bots/replying.py, bots/*/sink.py)
WARNING_MARKER = "⚠"
REFUSAL_WORDS = ("busy", "one at a time", "too fast")
ERROR_SETTLE_S = 3.0
_FENCE = re.compile(r"```[\w+#.-]*")


def normalized(text: str) -> str:
    """Letters and digits only: what survives mention defusing, splitting and fence markers."""
    return "".join(char for char in _FENCE.sub("", text).casefold() if char.isalnum())


def is_status(text: str) -> bool:
    return text.lstrip().startswith(STATUS_MARKERS)


def question_for(user: int, turn: int) -> str:
    return QUESTIONS[(user * 7 + turn * 3) % len(QUESTIONS)]


@dataclass
class Ask:
    """One question a simulated user asked, and what the bot has shown for it so far."""

    user: int
    place: str  # private, group, channel, dm
    conversation: str  # the bench's name for the bot's conversation there (see Place)
    question: str
    key: tuple[int, int]  # (chat or channel id, message id) of the user's message
    sent_at: float
    messages: list[Any] = field(default_factory=list)  # the bot's messages (World keys), in order
    text: str = ""
    first_response_at: float | None = None  # any bot message, a status included
    first_text_at: float | None = None  # the first text that is not a status
    changed_at: float | None = None
    final_at: float | None = None
    outcome: str | None = None  # answered, refused, error; None while open
    norm_question: str = ""

    def __post_init__(self) -> None:
        self.norm_question = normalized(self.question)


@dataclass(frozen=True)
class Place:
    """Where a simulated user asks: `kind` (private, group, channel, dm) and the conversation the
    bot keeps for it (members of a Telegram group share the group's)."""

    kind: str
    conversation: str


def layout(platform: str, users: int, *, groups: int = 5, group_users: int = 2, dms: int = 10) -> list[Place]:
    """Telegram: `users` private chats, then `groups` groups of `group_users` members. Discord:
    `users` users in a server channel of their own, then `dms` users in direct messages."""
    if platform == "telegram":
        return [Place("private", f"private-{user}") for user in range(users)] + [
            Place("group", f"group-{group}") for group in range(groups) for _ in range(group_users)
        ]
    if platform == "discord":
        return [Place("channel", f"channel-{user}") for user in range(users)] + [
            Place("dm", f"dm-{users + user}") for user in range(dms)
        ]
    raise ValueError(f"unknown platform {platform!r} (telegram or discord)")


class World:
    """One fake platform, seen from the users' side. Subclasses: TelegramWorld, DiscordWorld."""

    platform = ""

    def __init__(self, fake: Any, places: list[Place]) -> None:
        self.fake = fake
        self.places = places
        self.asks: dict[tuple[int, int], Ask] = {}
        self.latest: dict[int, Ask] = {}  # chat/channel id -> latest ask there (continuations)
        self._scanned = 0

    # what a subclass provides
    async def post(self, user: int, text: str) -> Ask:
        """User number `user` writes `text` at their place."""
        raise NotImplementedError

    def bot_env(self) -> dict[str, str]:
        """The environment that points the bot at the fake."""
        raise NotImplementedError

    async def connected(self) -> bool:
        """Whether the bot is connected and listening (polled while it starts)."""
        raise NotImplementedError

    def _bot_message(self, key: Any, message: dict[str, Any]) -> Ask | None:
        raise NotImplementedError

    def text_of(self, key: Any) -> str:
        raise NotImplementedError

    def draft_of(self, ask: Ask) -> str | None:
        """The draft the asker sees for `ask` before any message ("" for a placeholder such as
        "Thinking…"); None where there is none (Telegram's sendMessageDraft, private chats)."""
        return None

    def bot_texts(self) -> list[str]:
        raise NotImplementedError

    def delivery_calls(self) -> dict[str, int]:
        """The bot's API calls by kind: send, edit, typing, other (429s included)."""
        raise NotImplementedError

    # shared
    def _register(self, ask: Ask) -> Ask:
        self.asks[ask.key] = ask
        self.latest[ask.key[0]] = ask
        return ask

    def scan(self) -> None:
        """Attribute the bot's messages created since the last scan to the questions they answer."""
        messages = self.fake.messages
        if len(messages) == self._scanned:
            return
        new = list(itertools.islice(messages.items(), self._scanned, None))
        self._scanned += len(new)
        for key, message in new:
            ask = self._bot_message(key, message)
            if ask is not None:
                ask.messages.append(key)

    def current_text(self, ask: Ask) -> str:
        return "\n".join(self.text_of(key) for key in ask.messages)

    # the rating step (`lorabot bench load --rate`): what a user does with a final answer
    def last_message(self, ask: Ask) -> dict[str, Any] | None:
        return self.fake.messages.get(ask.messages[-1]) if ask.messages else None

    def buttons(self, ask: Ask) -> list[str]:
        """The button ids (Telegram callback_data, Discord custom ids) under the answer's last message."""
        raise NotImplementedError

    async def press(self, user: int, ask: Ask, button: str) -> None:
        raise NotImplementedError

    async def react(self, user: int, ask: Ask, emoji: str) -> bool:
        """React on the answer's first message; False where the platform sends the bot nothing."""
        raise NotImplementedError

    def rate_limited(self) -> dict[str, int]:
        return {
            "responses_429": sum(1 for call in self.fake.calls if call.status == 429),
            "fake_rate_refused": self.fake.rate.refused,
        }


class TelegramWorld(World):
    """Private chats, and groups where users mention the bot."""

    platform = "telegram"
    USER_BASE = 5_000_000_000
    GROUP_BASE = -1_002_000_000_000

    def __init__(self, fake: Any, places: list[Place], *, drafts: bool | None = None) -> None:
        """`drafts`: TELEGRAM_DRAFTS for the bot (None: the bot's default)."""
        from bench.fakes.telegram import BOT_USERNAME

        super().__init__(fake, places)
        self.drafts = drafts
        self.mention = f"@{BOT_USERNAME}"
        self.chats: dict[int, dict[str, Any]] = {}
        self.people: dict[int, dict[str, Any]] = {}
        groups: dict[str, dict[str, Any]] = {}
        for user, place in enumerate(places):
            person = fake.add_user(self.USER_BASE + user, f"User{user}", f"user_{user}")
            self.people[user] = person
            if place.kind == "private":
                self.chats[user] = fake.private_chat(person)
            else:
                if place.conversation not in groups:  # the bot is an admin: it gets reactions there
                    groups[place.conversation] = fake.group_chat(
                        self.GROUP_BASE - len(groups), place.conversation, bot_admin=True
                    )
                self.chats[user] = groups[place.conversation]

    async def post(self, user: int, text: str) -> Ask:
        chat, place = self.chats[user], self.places[user]
        message = self.fake.send_text(
            self.people[user], chat, text if place.kind == "private" else f"{self.mention} {text}"
        )
        return self._register(
            Ask(
                user,
                place.kind,
                place.conversation,
                text,
                (chat["id"], message["message_id"]),
                time.monotonic(),
            )
        )

    def bot_env(self) -> dict[str, str]:
        env = {
            "TELEGRAM_TOKEN": self.fake.token,
            "TELEGRAM_API_BASE_URL": self.fake.base_url,
            "TELEGRAM_FILE_BASE_URL": self.fake.base_file_url,
        }
        if self.drafts is not None:
            env["TELEGRAM_DRAFTS"] = "true" if self.drafts else "false"
        return env

    async def connected(self) -> bool:
        return bool(self.fake.calls_of("getUpdates") or self.fake.calls_of("setWebhook"))

    def _bot_message(self, key: Any, message: dict[str, Any]) -> Ask | None:
        from bench.fakes.telegram import BOT_ID

        if message["from"]["id"] != BOT_ID:
            return None
        chat_id = key[0]
        replied = (message.get("reply_to_message") or {}).get("message_id")
        if replied is not None and (chat_id, replied) in self.asks:
            return self.asks[(chat_id, replied)]
        # a continuation (a long answer spans several messages) follows its first message
        return self.latest.get(chat_id)

    def text_of(self, key: Any) -> str:
        return self.fake.messages.get(key, {}).get("text", "")

    def draft_of(self, ask: Ask) -> str | None:
        from bench.fakes.telegram import THINKING

        if ask.place != "private" or self.latest.get(ask.key[0]) is not ask:
            return None
        draft = self.fake.draft_in(ask.key[0])
        return "" if draft == THINKING else draft

    def buttons(self, ask: Ask) -> list[str]:
        return self.fake.button_data(self.last_message(ask))

    async def press(self, user: int, ask: Ask, button: str) -> None:
        message = self.last_message(ask)
        if message is not None:
            self.fake.press_button(self.people[user], message, button, strict=False)

    async def react(self, user: int, ask: Ask, emoji: str) -> bool:
        message = self.fake.messages.get(ask.messages[0]) if ask.messages else None
        return message is not None and self.fake.react(self.people[user], message, [emoji]) is not None

    def bot_texts(self) -> list[str]:
        from bench.fakes.telegram import BOT_ID

        return [m["text"] for m in list(self.fake.messages.values()) if m["from"]["id"] == BOT_ID]

    def delivery_calls(self) -> dict[str, int]:
        kinds = {
            "sendMessage": "send",
            "editMessageText": "edit",
            "sendMessageDraft": "draft",
            "sendChatAction": "typing",
        }
        counts = {"send": 0, "edit": 0, "draft": 0, "typing": 0, "other": 0}
        for call in self.fake.calls:
            counts[kinds.get(call.method, "other")] += 1
        return counts


class DiscordWorld(World):
    """Users in server channels of their own mentioning the bot, and users in DMs."""

    platform = "discord"
    CHANNEL_BASE = 811_000_000_000_000_000
    USER_BASE = 710_000_000_000_000_000
    _SEND = re.compile(r"/channels/\d+/messages")
    _EDIT = re.compile(r"/channels/\d+/messages/\d+")
    _TYPING = re.compile(r"/channels/\d+/typing")

    def __init__(self, fake: Any, places: list[Place]) -> None:
        super().__init__(fake, places)
        self.channels: dict[int, int | None] = {}  # user -> server channel id (None: DMs)
        for user, place in enumerate(places):
            fake.add_user(self.USER_BASE + user, f"user{user}")
            self.channels[user] = self.CHANNEL_BASE + user if place.kind == "channel" else None
        self._announced = False

    async def connected(self) -> bool:
        try:
            await self.fake.wait_ready(timeout=0.05)
        except TimeoutError:
            return False
        if not self._announced:  # a channel per user, announced the way Discord does on the gateway
            self._announced = True
            for user, channel_id in self.channels.items():
                if channel_id is not None:
                    payload = dict(self.fake._channel(channel_id), name=f"user-{user}", position=2 + user)
                    await self.fake.dispatch("CHANNEL_CREATE", payload)
        return True

    async def post(self, user: int, text: str) -> Ask:
        channel_id, place = self.channels[user], self.places[user]
        uid = self.USER_BASE + user
        if channel_id is None:
            message = await self.fake.user_message(text, user_id=uid, guild=False)
        else:
            message = await self.fake.user_message(text, user_id=uid, channel_id=channel_id, mention_bot=True)
        key = (int(message["channel_id"]), int(message["id"]))
        return self._register(Ask(user, place.kind, place.conversation, text, key, time.monotonic()))

    def bot_env(self) -> dict[str, str]:
        return {
            "DISCORD_TOKEN": self.fake.token,
            "DISCORD_API_BASE_URL": self.fake.api_base_url,
            "DISCORD_GATEWAY_URL": self.fake.gateway_url,
        }

    def _bot_message(self, key: Any, message: dict[str, Any]) -> Ask | None:
        from bench.fakes.discord import EPHEMERAL

        if message.get("flags", 0) & EPHEMERAL:  # a word to one person (e.g. why 🔁 was refused): no answer
            return None
        channel_id = int(message["channel_id"])
        reference = (message.get("message_reference") or {}).get("message_id")
        if reference is not None and (channel_id, int(reference)) in self.asks:
            return self.asks[(channel_id, int(reference))]
        return self.latest.get(channel_id)

    def text_of(self, key: Any) -> str:
        return self.fake.messages.get(key, {}).get("content", "")

    def buttons(self, ask: Ask) -> list[str]:
        from bench.fakes.discord import custom_ids

        message = self.last_message(ask)
        return custom_ids(message) if message is not None else []

    async def press(self, user: int, ask: Ask, button: str) -> None:
        message = self.last_message(ask)
        if message is not None:
            await self.fake.press(self.USER_BASE + user, message["id"], button)

    async def react(self, user: int, ask: Ask, emoji: str) -> bool:
        message = self.fake.messages.get(ask.messages[0]) if ask.messages else None
        if message is None:
            return False
        return await self.fake.react(self.USER_BASE + user, message["channel_id"], message["id"], emoji)

    def bot_texts(self) -> list[str]:
        return [m["content"] for m in list(self.fake.messages.values())]

    def delivery_calls(self) -> dict[str, int]:
        counts = {"send": 0, "edit": 0, "typing": 0, "other": 0}
        for call in self.fake.calls:
            if call.method == "POST" and self._SEND.fullmatch(call.path):
                counts["send"] += 1
            elif call.method == "PATCH" and self._EDIT.fullmatch(call.path):
                counts["edit"] += 1
            elif call.method == "POST" and self._TYPING.fullmatch(call.path):
                counts["typing"] += 1
            else:
                counts["other"] += 1
        return counts


class FinishedTurns:
    """The answers the bot's history database holds as finished, read-only from outside."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[str, list[str]] = {}  # normalized answer -> normalized questions
        self._db: sqlite3.Connection | None = None
        self._seen: set[tuple[int, int]] = set()  # (turn id, answer version): 🔁 makes a new version

    def refresh(self) -> bool:
        """Read newly finished turns (runs in a thread); True if there were any."""
        if self._db is None:
            if not self.path.exists():
                return False
            self._db = sqlite3.connect(self.path, timeout=1.0, check_same_thread=False)
        try:
            rows = self._db.execute(
                "SELECT id, version, question, answer FROM turns WHERE state IN ('answered', 'interrupted')"
            ).fetchall()
        except sqlite3.Error:
            return False  # the bot is creating or migrating the file: next time
        fresh = False
        for turn_id, version, question, answer in rows:
            if (turn_id, version) not in self._seen:
                self._seen.add((turn_id, version))
                self.answers.setdefault(normalized(answer) or "noanswer", []).append(normalized(question))
                fresh = True
        return fresh

    def pending(self) -> int:
        """Questions the bot accepted and has not finished (queued or being generated)."""
        if self._db is None:
            return 0
        return int(self._db.execute("SELECT count(*) FROM turns WHERE state = 'pending'").fetchone()[0])

    def matches(self, ask: Ask, text: str | None = None) -> bool:
        questions = self.answers.get(normalized(ask.text if text is None else text))
        return bool(questions) and any(ask.norm_question in question for question in questions)

    def ratings(self) -> int:
        """Ratings the bot has stored (the rating step checks none was lost)."""
        if self._db is None:
            return 0
        try:
            return int(self._db.execute("SELECT count(*) FROM ratings").fetchone()[0])
        except sqlite3.Error:
            return 0

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


class Tracker:
    """Follows every ask's bot messages; an ask becomes final as described in the module doc."""

    def __init__(self, world: World, turns: FinishedTurns) -> None:
        self.world = world
        self.turns = turns
        self.open: list[Ask] = []
        self.all: list[Ask] = []

    def add(self, ask: Ask) -> None:
        self.open.append(ask)
        self.all.append(ask)

    def poll(self, *, turns_changed: bool) -> None:
        self.world.scan()
        now = time.monotonic()
        still_open = []
        for ask in self.open:
            self._update(ask, now, turns_changed)
            if ask.outcome is None:
                still_open.append(ask)
        self.open = still_open

    def _update(self, ask: Ask, now: float, turns_changed: bool) -> None:
        if not ask.messages:
            draft = self.world.draft_of(ask)  # drafts: what the user sees before the message
            if draft is not None:
                ask.first_response_at = ask.first_response_at or now
                if ask.first_text_at is None and draft.strip() and not is_status(draft):
                    ask.first_text_at = now
            return
        if ask.first_response_at is None:
            ask.first_response_at = now
        text = self.world.current_text(ask)
        changed = text != ask.text
        if changed:
            ask.text, ask.changed_at = text, now
        if is_status(text) or not text.strip():
            return
        if ask.first_text_at is None:
            ask.first_text_at = now
        if (changed or turns_changed) and self.turns.matches(ask):
            ask.outcome, ask.final_at = "answered", ask.changed_at
            return
        stripped = text.lstrip()
        if stripped.startswith(WARNING_MARKER) and any(word in stripped.lower() for word in REFUSAL_WORDS):
            ask.outcome, ask.final_at = "refused", ask.changed_at
        elif WARNING_MARKER in text and now - (ask.changed_at or now) >= ERROR_SETTLE_S:
            ask.outcome, ask.final_at = "error", ask.changed_at

    def statuses(self) -> int:
        """The bot's messages that still show a queue/typing status."""
        return sum(1 for text in self.world.bot_texts() if is_status(text))
