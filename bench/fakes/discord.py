"""A small fake Discord: REST (v10) + gateway websocket, enough for the unmodified discord.py.

It speaks the real wire protocol (JSON REST with Discord's 429 shape, a zlib-stream compressed
gateway with HELLO / IDENTIFY / READY / GUILD_CREATE / heartbeats / dispatches) and records every
REST call, so tests assert on exactly what Discord would have received.

People act through drivers: `user_message`, `slash`, `react` / `unreact` (MESSAGE_REACTION_ADD /
REMOVE, only to connections whose IDENTIFY asked for the reaction intents) and `press` (a button:
INTERACTION_CREATE of type 3, answered with callback types 4/5, 6 or 7). Messages keep the buttons
(`components`) the bot sent or edited, and the checks Discord makes on them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import time
import urllib.parse
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from bench.fakes.limits import DiscordLimits, Limits, Window

DEFAULT_LIMITS = DiscordLimits()  # Discord's documented limits; frozen, so one instance serves every fake

API_PREFIX = "/api/v10"
TEXT_CHANNEL, DM_CHANNEL, PUBLIC_THREAD = 0, 1, 11
PERMISSIONS_ALL = str((1 << 50) - 1)
MANAGE_GUILD = 1 << 5
EVERYDAY_PERMISSIONS = (
    (1 << 10) | (1 << 11) | (1 << 14) | (1 << 16) | (1 << 31) | (1 << 38)
)  # view, send, embed, history, app cmds, threads
GUILD_MESSAGE_REACTIONS, DIRECT_MESSAGE_REACTIONS = 1 << 10, 1 << 13  # gateway intents
REACTION_EVENTS = ("MESSAGE_REACTION_ADD", "MESSAGE_REACTION_REMOVE")
EPHEMERAL = 1 << 6
MESSAGE_COMPONENT = 3  # interaction type of a button press
ACTION_ROW, BUTTON, LINK_STYLE = 1, 2, 5


class _Rejected(Exception):
    """Discord refuses the request (status + Discord's JSON error body)."""

    def __init__(self, status: int, message: str, code: int) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"message": message, "code": code}


def _check_content(content: str) -> None:
    """Discord's own rules for message text: not empty (we never send embeds/files), ≤ 2000."""
    if not content.strip():
        raise _Rejected(400, "Cannot send an empty message", 50006)
    if len(content) > 2000:
        raise _Rejected(400, "Invalid Form Body (content: Must be 2000 or fewer in length.)", 50035)


def _check_components(components: Any) -> None:
    """Discord's rules for buttons: at most 5 action rows of at most 5 buttons; each button has a
    label or an emoji, and (unless it is a link) a custom_id of 1-100 characters, unique in the message."""
    if not isinstance(components, list) or len(components) > 5:
        raise _Rejected(400, "Invalid Form Body (components: Must be 5 or fewer in length.)", 50035)
    seen: set[str] = set()
    for row in components:
        children = row.get("components") if row.get("type") == ACTION_ROW else None
        if not isinstance(children, list) or not 1 <= len(children) <= 5:
            raise _Rejected(400, "Invalid Form Body (components: an action row holds 1 to 5 items)", 50035)
        for button in children:
            if button.get("type") != BUTTON or not (button.get("label") or button.get("emoji")):
                raise _Rejected(400, "Invalid Form Body (components: a button needs a label or emoji)", 50035)
            if button.get("style") == LINK_STYLE:
                continue
            custom_id = button.get("custom_id") or ""
            if not 1 <= len(custom_id) <= 100 or custom_id in seen:
                raise _Rejected(400, "Invalid Form Body (components: custom_id missing or repeated)", 50035)
            seen.add(custom_id)


def custom_ids(message: dict[str, Any]) -> list[str]:
    """The custom ids of a message's buttons, row by row."""
    return [
        button["custom_id"]
        for row in message.get("components") or []
        for button in row.get("components") or []
        if button.get("custom_id")
    ]


@dataclass
class Call:
    """One REST request as Discord received it."""

    method: str
    path: str  # without the /api/v10 prefix
    query: dict[str, str]
    json: Any
    status: int = 200
    scripted: bool = False  # answered by fail_next()
    at: float = field(default_factory=time.monotonic)


@dataclass
class Failure:
    """A scripted error answer for the next matching request."""

    method: str
    pattern: re.Pattern[str]
    status: int
    retry_after: float
    times: int
    is_global: bool = False
    code: int = 0


def _user(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": name,
        "global_name": name,
        "discriminator": "0",
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
    }


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer with exactly `application/json`, as Discord sends (discord.py compares it)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())


class FakeDiscord:
    """In-process Discord double; start with `await fake.start()`, point discord.py at its URLs."""

    BOT_ID = 900_000_000_000_000_001
    APP_ID = BOT_ID
    GUILD_ID = 800_000_000_000_000_001
    CHANNEL_ID = 810_000_000_000_000_001
    OTHER_CHANNEL_ID = 810_000_000_000_000_002
    BOT_THREAD_ID = 820_000_000_000_000_001
    OWNER_ID = 700_000_000_000_000_001
    MEMBER_ROLE_ID = 830_000_000_000_000_001
    MOD_ROLE_ID = 830_000_000_000_000_002
    BOT_ROLE_ID = 830_000_000_000_000_003  # the managed role Discord gives a bot when it joins
    # a second server (add_guild): on shard 0 of 2, where GUILD_ID is on shard 1 ((id >> 22) % 2)
    SECOND_GUILD_ID = GUILD_ID + (1 << 22)
    SECOND_CHANNEL_ID = 810_000_000_000_000_101

    def __init__(self, *, token: str = "fake-token", limits: DiscordLimits | None = DEFAULT_LIMITS) -> None:
        self.token = token
        self.limits = limits  # None: no rate limits (only scripted failures)
        self.rate = Limits()
        self.calls: list[Call] = []
        self.identify: dict[str, Any] | None = None
        self.identifies: list[dict[str, Any]] = []  # every IDENTIFY, one per shard connection
        self.ready_shards: set[tuple[int, int]] = set()  # (shard id, count) sent READY + GUILD_CREATE
        self.extra_guilds: dict[int, int] = {}  # guild id -> its one text channel (add_guild)
        self.messages: dict[int, dict[str, Any]] = {}  # the bot's messages still on screen, by id
        self.deleted: dict[int, dict[str, Any]] = {}  # the bot's messages deleted since (delete_message)
        # an automod or a quick moderator: each new bot message it picks is deleted as soon as posted
        # (it is given the stored message: `_original` marks an interaction's original response)
        self.auto_delete: Callable[[dict[str, Any]], bool] | None = None
        self.commands: list[dict[str, Any]] = []
        self.callbacks: list[dict[str, Any]] = []  # interaction callback bodies, in order
        self._ids = itertools.count(1_000_000_000_000_000_001)
        self._failures: list[Failure] = []
        self._delays: list[tuple[str, re.Pattern[str], float]] = []
        self._drops: list[tuple[str, re.Pattern[str]]] = []
        self._nonces: dict[tuple[int, str], int] = {}  # (channel, nonce) -> message id (enforce_nonce)
        self._sockets: list[_GatewaySession] = []
        self._ready = asyncio.Event()
        self._interactions: dict[str, dict[str, Any]] = {}  # token -> interaction payload
        self._acknowledged: set[str] = set()  # interaction tokens given their one callback
        self._pressed_on: dict[str, int] = {}  # a button press's token -> the message the button is on
        self._session_intents: dict[str, int] = {}  # gateway session -> IDENTIFY's intents (kept on RESUME)
        self._authors: dict[int, int] = {}  # users' messages -> author (reactions carry message_author_id)
        # the reactions on messages: message id -> emoji -> users who reacted with it
        self.reactions: dict[int, dict[str, set[int]]] = {}
        self._runner: web.AppRunner | None = None
        self._echoes: set[asyncio.Task[None]] = set()
        self.heartbeats = 0
        self.resumes: list[dict[str, Any]] = []  # RESUME payloads received
        self.threads: dict[int, dict[str, Any]] = {}  # threads the bot started, by id
        self.port = 0
        self.users: dict[int, dict[str, Any]] = {self.OWNER_ID: _user(self.OWNER_ID, "owner")}

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def api_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway/"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway/", self._gateway)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        for session in list(self._sockets):
            await session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_ready(self, timeout: float = 10) -> None:
        """Wait until a client identified and got READY + GUILD_CREATE."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    # ---- scripting -------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 429,
        retry_after: float = 0.3,
        times: int = 1,
        is_global: bool = False,
        code: int = 0,
    ) -> None:
        """Answer the next `times` matching requests with an error (429 carries retry_after;
        `is_global` makes it the bot-wide 429 that closes discord.py's global gate)."""
        self._failures.append(
            Failure(method, re.compile(path_regex), status, retry_after, times, is_global, code)
        )

    async def drop_connections(self, code: int = 4000) -> None:
        """Close every gateway socket as Discord does on a hiccup; clients should RESUME."""
        for session in list(self._sockets):
            await session.ws.close(code=code, message=b"fake disconnect")

    def drop_next(self, method: str, path_regex: str) -> None:
        """Carry out the next matching request, then close the connection without an answer (a
        timeout after Discord took it): the client cannot know that it went through."""
        self._drops.append((method, re.compile(path_regex)))

    def delay_next(self, method: str, path_regex: str, seconds: float) -> None:
        """Handle the next matching request at once but send its answer `seconds` later."""
        self._delays.append((method, re.compile(path_regex), seconds))

    async def delete_message(self, message_id: int | str) -> None:
        """A moderator (or the user) deletes one of the bot's messages: it leaves the channel's
        view, MESSAGE_DELETE goes out, and editing it answers 404 Unknown Message (10008)."""
        message = self.messages.pop(int(message_id))
        self.deleted[int(message_id)] = message
        event = {"id": message["id"], "channel_id": message["channel_id"]}
        if message.get("guild_id"):
            event["guild_id"] = message["guild_id"]
        await self.dispatch("MESSAGE_DELETE", event)

    def add_user(self, user_id: int, name: str | None = None) -> dict[str, Any]:
        self.users.setdefault(user_id, _user(user_id, name or f"user{user_id % 10_000}"))
        return self.users[user_id]

    def snowflake(self) -> int:
        return next(self._ids)

    def add_guild(self, guild_id: int = SECOND_GUILD_ID, channel_id: int = SECOND_CHANNEL_ID) -> None:
        """Another server with one text channel, sent to the shard it belongs to on IDENTIFY."""
        self.extra_guilds[guild_id] = channel_id

    def guild_of(self, channel_id: int) -> int:
        return next((g for g, c in self.extra_guilds.items() if c == channel_id), self.GUILD_ID)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to the connections that should get it: a server's events to the shard
        that server is on (`(guild_id >> 22) % shard_count`, as Discord routes them), others
        (DMs) to shard 0."""
        guild_id = data.get("guild_id") or (data.get("id") if event.startswith("GUILD_") else None)
        for session in list(self._sockets):
            if session.receives(int(guild_id) if guild_id else None) and session.wants(event, guild_id):
                await session.dispatch(event, data)

    def guild_of_channel(self, channel_id: int) -> int | None:
        """The server a channel (or thread) is in; None for a DM channel."""
        if (
            channel_id in (self.CHANNEL_ID, self.OTHER_CHANNEL_ID, self.BOT_THREAD_ID)
            or channel_id in self.threads
        ):
            return self.GUILD_ID
        if channel_id in self.extra_guilds.values():
            return self.guild_of(channel_id)
        return None

    async def user_message(
        self,
        content: str,
        *,
        user_id: int = OWNER_ID,
        channel_id: int | None = None,
        guild: bool = True,
        guild_id: int | None = None,
        mention_bot: bool = False,
        mention_bot_role: bool = False,
        reply_to: dict[str, Any] | None = None,
        mentions: list[int] | None = None,
        roles: list[int] | None = None,
        bot_author: bool = False,
    ) -> dict[str, Any]:
        """A user posts `content`.

        mention_bot prefixes '<@bot>' and lists the bot in mentions; mention_bot_role does the
        same with the bot's managed role; reply_to makes it a reply (without ping) to a message.
        """
        author = dict(self.add_user(user_id), bot=bot_author)
        if mention_bot:
            content = f"<@{self.BOT_ID}> {content}"
        if mention_bot_role:
            content = f"<@&{self.BOT_ROLE_ID}> {content}"
        message: dict[str, Any] = {
            "id": str(self.snowflake()),
            "channel_id": str(channel_id or (self.CHANNEL_ID if guild else self.dm_channel_id(user_id))),
            "author": author,
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": ([self._bot_user()] if mention_bot else [])
            + [self.add_user(u) for u in mentions or []],
            "mention_roles": [str(self.BOT_ROLE_ID)] if mention_bot_role else [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        if reply_to is not None:
            message["type"] = 19
            message["message_reference"] = {
                "message_id": reply_to["id"],
                "channel_id": reply_to["channel_id"],
                "type": 0,
            }
            message["referenced_message"] = self._public(self.messages.get(int(reply_to["id"]), reply_to))
        if guild:
            message["guild_id"] = str(guild_id or self.guild_of(int(message["channel_id"])))
            message["member"] = self._member(user_id, roles)
        self._authors[int(message["id"])] = user_id
        await self.dispatch("MESSAGE_CREATE", message)
        return message

    async def react(
        self,
        user_id: int,
        channel_id: int | str,
        message_id: int | str,
        emoji: str = "👍",
        *,
        roles: list[int] | None = None,
    ) -> bool:
        """User `user_id` adds the reaction `emoji` (unicode) to a message, as a Discord client does:
        MESSAGE_REACTION_ADD (with the member in a server) goes to the connections that asked for
        the reaction intents; reacting again with the same emoji sends nothing. Returns whether an
        event went out."""
        event = self._reaction(user_id, int(channel_id), int(message_id), emoji, added=True, roles=roles)
        if event is not None:
            await self.dispatch("MESSAGE_REACTION_ADD", event)
        return event is not None

    async def unreact(
        self, user_id: int, channel_id: int | str, message_id: int | str, emoji: str = "👍"
    ) -> bool:
        """User `user_id` takes their reaction `emoji` back: MESSAGE_REACTION_REMOVE (never with the
        member, as on Discord), or nothing if they had not reacted so. Returns whether an event went out."""
        event = self._reaction(user_id, int(channel_id), int(message_id), emoji, added=False)
        if event is not None:
            await self.dispatch("MESSAGE_REACTION_REMOVE", event)
        return event is not None

    def reacted(self, message_id: int | str, emoji: str = "👍") -> set[int]:
        """The users whose reaction `emoji` is on a message now."""
        return set(self.reactions.get(int(message_id), {}).get(emoji, set()))

    def _reaction(
        self,
        user_id: int,
        channel_id: int,
        message_id: int,
        emoji: str,
        *,
        added: bool,
        roles: list[int] | None = None,
    ) -> dict[str, Any] | None:
        """Apply one reaction change: the gateway event Discord sends for it, None if nothing changed."""
        users = self.reactions.setdefault(message_id, {}).setdefault(emoji, set())
        if (user_id in users) == added:
            return None
        (users.add if added else users.discard)(user_id)
        event: dict[str, Any] = {
            "user_id": str(user_id),
            "channel_id": str(channel_id),
            "message_id": str(message_id),
            "emoji": {"id": None, "name": emoji},
            "burst": False,
            "type": 0,
        }
        guild_id = self.guild_of_channel(channel_id)
        if guild_id is not None:
            event["guild_id"] = str(guild_id)
        if added:
            event["burst_colors"] = []
            author = self._author_of(message_id)
            if author is not None:
                event["message_author_id"] = str(author)
            if guild_id is not None:
                user = self._bot_user() if user_id == self.BOT_ID else self.add_user(user_id)
                member_roles = [self.BOT_ROLE_ID] if user_id == self.BOT_ID else roles
                event["member"] = dict(self._member(user_id, member_roles), user=user)
        return event

    def _author_of(self, message_id: int) -> int | None:
        if message_id in self.messages or message_id in self.deleted:
            return self.BOT_ID
        return self._authors.get(message_id)

    async def press(
        self,
        user_id: int,
        message_id: int | str,
        custom_id: str,
        *,
        roles: list[int] | None = None,
        permissions: int = EVERYDAY_PERMISSIONS,
    ) -> str:
        """User `user_id` presses the button `custom_id` on the bot's message `message_id`:
        INTERACTION_CREATE of type 3 (MESSAGE_COMPONENT) carrying the message as it is now.

        Returns the interaction token (answers: `callbacks`, `interaction_messages`). Only a button
        that is on the message can be pressed, as in a Discord client."""
        message = self.messages[int(message_id)]
        if custom_id not in custom_ids(message):
            raise ValueError(f"message {message_id} has no button {custom_id!r}: {custom_ids(message)}")
        token = self._new_interaction(
            MESSAGE_COMPONENT,
            {"custom_id": custom_id, "component_type": BUTTON},
            int(message["channel_id"]),
            user_id,
            roles=roles,
            permissions=permissions,
            message=self._public(message),
        )
        self._pressed_on[token] = int(message_id)
        await self.dispatch("INTERACTION_CREATE", self._interactions[token])
        return token

    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user_id: int = OWNER_ID,
        guild: bool = True,
        roles: list[int] | None = None,
        permissions: int = EVERYDAY_PERMISSIONS,
        autocomplete: str | None = None,
    ) -> str:
        """Invoke slash command `name` (type 2) or, with `autocomplete=option`, ask for choices (type 4).

        Returns the interaction token (use it with `interaction_messages`).
        """
        command = next(c for c in self.commands if c["name"] == name)
        opts = []
        for key, value in (options or {}).items():
            opt = {"name": key, "type": 3, "value": value}
            if key == autocomplete:
                opt["focused"] = True
            opts.append(opt)
        channel_id = self.CHANNEL_ID if guild else self.dm_channel_id(user_id)
        data = {"id": command["id"], "name": name, "type": 1, "options": opts}
        token = self._new_interaction(
            4 if autocomplete else 2, data, channel_id, user_id, roles=roles, permissions=permissions
        )
        await self.dispatch("INTERACTION_CREATE", self._interactions[token])
        return token

    def _new_interaction(
        self,
        kind: int,
        data: dict[str, Any],
        channel_id: int,
        user_id: int,
        *,
        roles: list[int] | None,
        permissions: int,
        message: dict[str, Any] | None = None,
    ) -> str:
        """Register an interaction's payload as Discord sends it; returns its token."""
        token = f"itoken-{self.snowflake()}"
        guild_id = self.guild_of_channel(channel_id)
        payload: dict[str, Any] = {
            "id": str(self.snowflake()),
            "application_id": str(self.APP_ID),
            "type": kind,
            "data": data,
            "channel_id": str(channel_id),
            "channel": self._channel(channel_id) if guild_id else {"id": str(channel_id), "type": DM_CHANNEL},
            "token": token,
            "version": 1,
            "app_permissions": PERMISSIONS_ALL,
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild_id)} if guild_id else {"1": str(user_id)},
            "context": 0 if guild_id else 1,
            "attachment_size_limit": 10_000_000,
        }
        if message is not None:
            payload["message"] = message
        if guild_id:
            payload["guild_id"] = str(guild_id)
            payload["guild_locale"] = "en-US"
            payload["member"] = dict(
                self._member(user_id, roles), user=self.add_user(user_id), permissions=str(permissions)
            )
        else:
            payload["user"] = self.add_user(user_id)
        self._interactions[token] = payload
        return token

    # ---- queries for tests -----------------------------------------------------------

    def find(self, method: str | None = None, path_regex: str = "") -> list[Call]:
        pattern = re.compile(path_regex)
        return [c for c in self.calls if (method is None or c.method == method) and pattern.search(c.path)]

    def unexpected_errors(self) -> list[Call]:
        """Requests Discord would have refused (4xx/5xx) that no test scripted."""
        return [c for c in self.calls if c.status >= 400 and not c.scripted]

    def bot_messages(self, channel_id: int | None = None) -> list[dict[str, Any]]:
        """Messages the bot posted (channel messages, interaction responses and follow-ups), oldest first."""
        found = [
            m for m in self.messages.values() if channel_id is None or int(m["channel_id"]) == channel_id
        ]
        return sorted(found, key=lambda m: int(m["id"]))

    def visible_texts(self, channel_id: int | None = None) -> list[str]:
        """What a user scrolling the channel sees of the bot, oldest first (deleted ones gone)."""
        return [m["content"] for m in self.bot_messages(channel_id)]

    def replies_to(self, message_id: str) -> list[dict[str, Any]]:
        """The bot's messages that reply to user message `message_id`."""
        return [
            m
            for m in self.bot_messages()
            if str((m.get("message_reference") or {}).get("message_id")) == str(message_id)
        ]

    def interaction_messages(self, token: str) -> list[dict[str, Any]]:
        """The original response and follow-ups of one interaction, oldest first."""
        return [m for m in self.bot_messages() if m.get("_interaction_token") == token]

    async def wait_until(self, predicate: Callable[[], Any], timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {predicate}")
            await asyncio.sleep(0.01)

    def dm_channel_id(self, user_id: int) -> int:
        return 600_000_000_000_000_000 + user_id % 100_000_000_000

    # ---- payload builders ------------------------------------------------------------

    def _bot_user(self) -> dict[str, Any]:
        return _user(self.BOT_ID, "lorabot", bot=True)

    def _member(self, user_id: int, roles: list[int] | None) -> dict[str, Any]:
        return {
            "roles": [str(r) for r in (roles or [])],
            "joined_at": _now(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
        }

    def _thread(self, thread_id: int, parent_id: int, name: str) -> dict[str, Any]:
        return {
            "id": str(thread_id),
            "type": PUBLIC_THREAD,
            "guild_id": str(self.GUILD_ID),
            "parent_id": str(parent_id),
            "owner_id": str(self.BOT_ID),
            "name": name,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": _now(),
                "locked": False,
            },
            "flags": 0,
        }

    def _channel(self, channel_id: int) -> dict[str, Any]:
        if channel_id in self.threads:
            return self.threads[channel_id]
        if channel_id == self.BOT_THREAD_ID:
            return self._thread(channel_id, self.CHANNEL_ID, "lorabot thread")
        return {
            "id": str(channel_id),
            "type": TEXT_CHANNEL,
            "guild_id": str(self.guild_of(channel_id)),
            "name": "general" if channel_id == self.CHANNEL_ID else "other",
            "position": 0 if channel_id == self.CHANNEL_ID else 1,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }

    def _guild(self, guild_id: int | None = None) -> dict[str, Any]:
        def role(role_id: int, name: str, permissions: int, position: int) -> dict[str, Any]:
            return {
                "id": str(role_id),
                "name": name,
                "permissions": str(permissions),
                "position": position,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": True,
                "flags": 0,
            }

        if guild_id is not None and guild_id != self.GUILD_ID:  # an extra server: one channel, no roles
            return dict(
                self._guild(),
                id=str(guild_id),
                name=f"Server {guild_id % 10_000}",
                roles=[role(guild_id, "@everyone", EVERYDAY_PERMISSIONS, 0)],
                channels=[self._channel(self.extra_guilds[guild_id])],
                threads=[],
                members=[dict(self._member(self.BOT_ID, []), user=self._bot_user())],
            )
        return {
            "id": str(self.GUILD_ID),
            "name": "Test Server",
            "icon": None,
            "owner_id": str(self.OWNER_ID),
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": [
                role(self.GUILD_ID, "@everyone", EVERYDAY_PERMISSIONS, 0),
                role(self.MEMBER_ROLE_ID, "member", EVERYDAY_PERMISSIONS, 1),
                role(self.MOD_ROLE_ID, "mod", EVERYDAY_PERMISSIONS | MANAGE_GUILD, 2),
                dict(
                    role(self.BOT_ROLE_ID, "lorabot", EVERYDAY_PERMISSIONS, 3),
                    managed=True,
                    tags={"bot_id": str(self.BOT_ID)},
                ),
            ],
            "channels": [self._channel(self.CHANNEL_ID), self._channel(self.OTHER_CHANNEL_ID)],
            "threads": [self._channel(self.BOT_THREAD_ID)],
            "members": [dict(self._member(self.BOT_ID, [self.BOT_ROLE_ID]), user=self._bot_user())],
            "member_count": 2,
            "large": False,
            "unavailable": False,
            "joined_at": _now(),
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    # ---- REST ------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if request.content_type == "application/json":
                body = json.loads(raw)
            elif request.content_type.startswith("multipart/"):
                body = {"_multipart": True}
        call = Call(request.method, path, dict(request.query), body)
        self.calls.append(call)

        if request.headers.get("Authorization") != f"Bot {self.token}" and not path.startswith(
            ("/webhooks/", "/interactions/")
        ):
            call.status = 401
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)

        for failure in self._failures:
            if failure.times > 0 and failure.method == request.method and failure.pattern.search(path):
                failure.times -= 1
                call.status = failure.status
                call.scripted = True
                if failure.status == 429:
                    return _json(
                        {
                            "message": "You are being rate limited.",
                            "retry_after": failure.retry_after,
                            "global": failure.is_global,
                        },
                        status=429,
                        headers={
                            "Retry-After": str(max(1, round(failure.retry_after))),
                            "X-RateLimit-Limit": "5",
                            "X-RateLimit-Remaining": "0",
                            "X-RateLimit-Reset-After": str(failure.retry_after),
                            "X-RateLimit-Bucket": "fake-bucket-" + failure.method.lower(),
                            "X-RateLimit-Scope": "user",
                            "Via": "1.1 google",
                        },
                    )
                return _json({"message": "fake failure", "code": failure.code}, status=failure.status)

        limited = self._rate_limit(request.method, path)
        if isinstance(limited, web.Response):
            call.status = 429
            return limited
        try:
            status, answer = self._route(request.method, path, body, request.query)
        except _Rejected as rejected:
            status, answer = rejected.status, rejected.body
        call.status = status
        for drop in self._drops:
            if drop[0] == request.method and drop[1].search(path):
                self._drops.remove(drop)
                assert request.transport is not None
                request.transport.close()  # done, but the answer never comes
                return web.Response(status=status)
        for delay in self._delays:
            if delay[0] == request.method and delay[1].search(path):
                self._delays.remove(delay)
                await asyncio.sleep(delay[2])
                break
        headers = limited or {}
        if status == 204:
            return web.Response(status=204, headers=headers)
        return _json(answer, status=status, headers=headers)

    # Per-route buckets Discord documents for what the bot does in a channel; the bucket hash
    # is what discord.py keys its own limiter on (with the channel id as major parameter).
    _ROUTES = (
        ("POST", re.compile(r"/channels/(\d+)/messages"), "messages"),
        ("PATCH", re.compile(r"/channels/(\d+)/messages/\d+"), "messages"),
        ("POST", re.compile(r"/channels/(\d+)/typing"), "typing"),
    )

    def _rate_limit(self, method: str, path: str) -> web.Response | dict[str, str] | None:
        """Discord's global and per-route limits: a 429 response, or the headers for the answer."""
        if self.limits is None or path.startswith(("/interactions/", "/webhooks/")):
            return None  # interaction endpoints are not bound to the global limit
        windows = [self.rate.window("global", self.limits.global_per_second, 1.0)]
        bucket: tuple[str, Window] | None = None
        for route_method, pattern, name in self._ROUTES:
            if route_method == method and (match := pattern.fullmatch(path)):
                key = f"{name}:{match.group(1)}"
                bucket = (name, self.rate.window(key, self.limits.channel_messages_per_5s, 5.0))
                windows.append(bucket[1])
                break
        wait = self.rate.check(windows)
        now = self.rate.clock()
        if wait:
            is_global = windows[0].wait(now) > 0
            headers = {"Retry-After": str(max(1, round(wait))), "Via": "1.1 google"}
            if is_global:
                headers["X-RateLimit-Global"] = "true"
                headers["X-RateLimit-Scope"] = "global"
            elif bucket is not None:
                headers.update(self._bucket_headers(bucket, now))
                headers["X-RateLimit-Scope"] = "user"
            body = {
                "message": "You are being rate limited.",
                "retry_after": round(wait, 3),
                "global": is_global,
            }
            return _json(body, status=429, headers=headers)
        return self._bucket_headers(bucket, now) if bucket is not None else None

    @staticmethod
    def _bucket_headers(bucket: tuple[str, Window], now: float) -> dict[str, str]:
        name, window = bucket
        return {
            "X-RateLimit-Limit": str(window.limit),
            "X-RateLimit-Remaining": str(max(0, window.remaining(now))),
            "X-RateLimit-Reset-After": f"{max(window.reset_after(now), 0.001):.3f}",
            "X-RateLimit-Bucket": f"fake-{name}",
        }

    def _route(self, method: str, path: str, body: Any, query: Any) -> tuple[int, Any]:
        m = re.fullmatch
        if method == "GET" and path == "/users/@me":
            return 200, self._bot_user()
        if method == "GET" and path == "/oauth2/applications/@me":
            return 200, {
                "id": str(self.APP_ID),
                "name": "lorabot",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": self.users[self.OWNER_ID],
                "flags": 1 << 19,  # GATEWAY_MESSAGE_CONTENT_LIMITED
                "team": None,
                "summary": "",
            }
        if method == "GET" and path in ("/gateway", "/gateway/bot"):
            return 200, {
                "url": self.gateway_url.rstrip("/"),
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        if method == "PUT" and (match := m(r"/applications/(\d+)(?:/guilds/\d+)?/commands", path)):
            self.commands = [
                dict(
                    cmd,
                    id=str(self.snowflake()),
                    application_id=match.group(1),
                    version="1",
                    default_member_permissions=cmd.get("default_member_permissions"),
                )
                for cmd in body
            ]
            return 200, self.commands
        if method == "GET" and m(r"/applications/\d+/commands", path):
            return 200, self.commands
        if method == "POST" and m(r"/channels/\d+/typing", path):
            return 204, None
        if method == "POST" and (match := m(r"/channels/(\d+)/messages/(\d+)/threads", path)):
            thread_id = int(match.group(2))  # Discord gives a thread started from a message the message's id
            thread = self._thread(thread_id, int(match.group(1)), body["name"])
            self.threads[thread_id] = thread
            self._echo("THREAD_CREATE", dict(thread, newly_created=True))
            return 201, thread
        if method == "POST" and (match := m(r"/channels/(\d+)/messages", path)):
            key = (int(match.group(1)), str(body.get("nonce")))
            if body.get("enforce_nonce") and key in self._nonces and self._nonces[key] in self.messages:
                return 200, self._public(self.messages[self._nonces[key]])  # already posted: that one
            message = self._create_message(int(match.group(1)), body)
            if body.get("nonce") is not None:
                self._nonces[key] = int(message["id"])
            return 200, message
        if method == "PATCH" and (match := m(r"/channels/\d+/messages/(\d+)", path)):
            return self._edit_message(int(match.group(1)), body)
        if method in ("PUT", "DELETE") and (
            match := m(r"/channels/(\d+)/messages/(\d+)/reactions/([^/]+)/@me", path)
        ):
            return self._own_reaction(method == "PUT", *match.groups())
        if method == "DELETE" and (match := m(r"/channels/\d+/messages/(\d+)", path)):
            if int(match.group(1)) not in self.messages:
                return 404, {"message": "Unknown Message", "code": 10008}
            self.deleted[int(match.group(1))] = self.messages.pop(int(match.group(1)))
            return 204, None
        if method == "POST" and (match := m(r"/interactions/(\d+)/([^/]+)/callback", path)):
            return self._interaction_callback(match.group(2), body)
        if method == "POST" and (match := m(r"/webhooks/\d+/([^/]+)", path)):
            interaction = self._interactions.get(match.group(1))
            if interaction is None:
                return 404, {"message": "Unknown Webhook", "code": 10015}
            message = self._create_message(int(interaction["channel_id"]), body, token=match.group(1))
            return 200, message
        if method in ("GET", "PATCH") and (
            match := m(r"/webhooks/\d+/([^/]+)/messages/(@original|\d+)", path)
        ):
            token, which = match.groups()
            if which == "@original":  # the response; after a press answered 6/7, the pressed message
                found = next((x for x in self.interaction_messages(token) if x.get("_original")), None)
                if found is None and token in self._pressed_on:
                    found = self.messages.get(self._pressed_on[token])
            else:
                found = self.messages.get(int(which))
            if found is None:
                return 404, {"message": "Unknown Message", "code": 10008}
            if method == "GET":
                return 200, self._public(found)
            return self._edit_message(int(found["id"]), body)
        return 404, {"message": f"fake Discord has no route {method} {path}", "code": 0}

    def _own_reaction(self, added: bool, channel_id: str, message_id: str, emoji: str) -> tuple[int, Any]:
        """The bot reacts (PUT) or takes its reaction back (DELETE); Discord echoes it on the gateway."""
        if int(message_id) not in self.messages and int(message_id) not in self._authors:
            return 404, {"message": "Unknown Message", "code": 10008}
        name = urllib.parse.unquote(emoji)
        event = self._reaction(self.BOT_ID, int(channel_id), int(message_id), name, added=added)
        if event is not None:
            self._echo(REACTION_EVENTS[0] if added else REACTION_EVENTS[1], event)
        return 204, None

    def _create_message(
        self, channel_id: int, body: dict[str, Any], *, token: str | None = None, original: bool = False
    ) -> dict[str, Any]:
        content = body.get("content") or ""
        if not original:
            _check_content(content)
        components = body.get("components") or []
        _check_components(components)
        message = {
            "id": str(self.snowflake()),
            "channel_id": str(channel_id),
            "author": self._bot_user(),
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 19 if body.get("message_reference") else 0,
            "flags": body.get("flags") or 0,
            "allowed_mentions": body.get("allowed_mentions"),
            "components": components,
            "_edits": 0,
        }
        if (guild_id := self.guild_of_channel(channel_id)) is not None:
            message["guild_id"] = str(guild_id)
        if body.get("message_reference"):
            ref = body["message_reference"]
            message["message_reference"] = {
                "message_id": str(ref["message_id"]),
                "channel_id": str(ref.get("channel_id") or channel_id),
                "type": ref.get("type", 0),
            }
        if token is not None:
            message["_interaction_token"] = token
            message["_original"] = original
            message["webhook_id"] = str(self.APP_ID)
        self.messages[int(message["id"])] = message
        if not message.get("flags", 0) & EPHEMERAL:  # like Discord, echo the bot's own message on the gateway
            self._echo("MESSAGE_CREATE", self._public(message))
        if self.auto_delete is not None and self.auto_delete(message):
            self.deleted[int(message["id"])] = self.messages.pop(int(message["id"]))
            self._echo(
                "MESSAGE_DELETE", {k: message[k] for k in ("id", "channel_id", "guild_id") if k in message}
            )
        return self._public(message)

    def _echo(self, event: str, data: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self.dispatch(event, data))
        self._echoes.add(task)
        task.add_done_callback(self._echoes.discard)

    def _edit_message(self, message_id: int, body: dict[str, Any]) -> tuple[int, Any]:
        message = self.messages.get(message_id)
        if message is None:
            return 404, {"message": "Unknown Message", "code": 10008}
        if "content" in body:
            _check_content(body["content"] or "")
        if "components" in body:
            _check_components(body["components"] or [])
        if "content" in body:
            message["content"] = body["content"]
        if "components" in body:  # [] (or null) takes the buttons off
            message["components"] = body["components"] or []
        message["edited_timestamp"] = _now()
        message["_edits"] += 1
        return 200, self._public(message)

    def _interaction_callback(self, token: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.callbacks.append(dict(body, _token=token))
        interaction = self._interactions.get(token)
        if interaction is None:
            return 404, {"message": "Unknown interaction", "code": 10062}
        if token in self._acknowledged:  # each interaction takes one callback; then follow-ups
            return 400, {"message": "Interaction has already been acknowledged.", "code": 40060}
        kind = body["type"]
        if kind in (6, 7) and interaction["type"] != MESSAGE_COMPONENT:
            return 400, {"message": "Invalid Form Body (type: not valid for this interaction)", "code": 50035}
        self._acknowledged.add(token)
        answer: dict[str, Any] = {"interaction": {"id": interaction["id"], "type": interaction["type"]}}
        data = body.get("data") or {}
        if kind == 7:  # UPDATE_MESSAGE: edits the message the pressed button is on
            status, edited = self._edit_message(self._pressed_on[token], data)
            if status != 200:
                self._acknowledged.discard(token)
                return status, edited
            answer["resource"] = {"type": kind, "message": edited}
        if kind in (4, 5):  # message / deferred message: the response becomes the original message
            message = self._create_message(
                int(interaction["channel_id"]),
                {
                    "content": data.get("content", ""),
                    "flags": data.get("flags"),
                    "allowed_mentions": data.get("allowed_mentions"),
                    "components": data.get("components"),
                },
                token=token,
                original=True,
            )
            answer["interaction"].update(
                response_message_id=message["id"],
                response_message_loading=kind == 5,
                response_message_ephemeral=bool((data.get("flags") or 0) & EPHEMERAL),
            )
            answer["resource"] = {"type": kind, "message": message}
        return 200, answer

    @staticmethod
    def _public(message: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in message.items() if not k.startswith("_") and k != "allowed_mentions"}

    # ---- gateway ---------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoclose=False)
        await ws.prepare(request)
        session = _GatewaySession(self, ws, request.query.get("compress"))
        self._sockets.append(session)
        try:
            await session.run()
        finally:
            self._sockets.remove(session)
        return ws


class _GatewaySession:
    """One websocket connection: HELLO, IDENTIFY/RESUME, heartbeats, dispatches with sequence numbers."""

    def __init__(self, fake: FakeDiscord, ws: web.WebSocketResponse, compress: str | None) -> None:
        self.fake = fake
        self.ws = ws
        self.seq = 0
        self.session_id = f"session-{fake.snowflake()}"
        self._zlib = zlib.compressobj() if compress == "zlib-stream" else None
        if compress not in (None, "zlib-stream"):
            raise web.HTTPBadRequest(text=f"fake gateway only speaks zlib-stream, not {compress}")
        self._send_lock = asyncio.Lock()
        self.shard = (0, 1)  # (id, count) from IDENTIFY; an unsharded client sends none
        self.intents = 0  # from IDENTIFY (or the resumed session's)

    def receives(self, guild_id: int | None) -> bool:
        shard_id, count = self.shard
        return shard_id == 0 if guild_id is None else (guild_id >> 22) % count == shard_id

    def wants(self, event: str, guild_id: int | str | None) -> bool:
        """Discord sends reaction events only to connections whose IDENTIFY asked for them."""
        if event not in REACTION_EVENTS:
            return True
        return bool(self.intents & (GUILD_MESSAGE_REACTIONS if guild_id else DIRECT_MESSAGE_REACTIONS))

    def guild_ids(self) -> list[int]:
        return [g for g in (self.fake.GUILD_ID, *self.fake.extra_guilds) if self.receives(g)]

    async def send(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload)
        async with self._send_lock:
            if self.ws.closed:
                return
            if self._zlib is not None:
                await self.ws.send_bytes(
                    self._zlib.compress(data.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                )
            else:
                await self.ws.send_str(data)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.seq += 1
        await self.send({"op": 0, "t": event, "s": self.seq, "d": data})

    async def run(self) -> None:
        await self.send({"op": 10, "d": {"heartbeat_interval": 41_250}, "s": None, "t": None})
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                break
            payload = json.loads(msg.data)
            op = payload["op"]
            if op == 1:  # heartbeat
                self.fake.heartbeats += 1
                await self.send({"op": 11, "d": None, "s": None, "t": None})
            elif op == 2:  # identify
                if payload["d"]["token"] != self.fake.token:
                    await self.ws.close(code=4004, message=b"Authentication failed.")
                    break
                self.fake.identify = payload["d"]
                self.fake.identifies.append(payload["d"])
                shard = payload["d"].get("shard") or [0, 1]
                self.intents = int(payload["d"].get("intents") or 0)
                self.fake._session_intents[self.session_id] = self.intents
                self.shard = (int(shard[0]), int(shard[1]))
                await self.dispatch(
                    "READY",
                    {
                        "v": 10,
                        "user": self.fake._bot_user(),
                        "guilds": [{"id": str(g), "unavailable": True} for g in self.guild_ids()],
                        "session_id": self.session_id,
                        "resume_gateway_url": self.fake.gateway_url,
                        "application": {"id": str(self.fake.APP_ID), "flags": 1 << 19},
                        "private_channels": [],
                        "relationships": [],
                        "user_settings": {},
                        "shard": list(self.shard),
                    },
                )
                for guild_id in self.guild_ids():
                    await self.dispatch("GUILD_CREATE", self.fake._guild(guild_id))
                self.fake.ready_shards.add(self.shard)
                self.fake._ready.set()
            elif op == 6:  # resume: replay nothing (tests resume between events)
                self.fake.resumes.append(payload["d"])
                self.intents = self.fake._session_intents.get(payload["d"].get("session_id"), 0)
                self.seq = payload["d"].get("seq") or 0
                await self.dispatch("RESUMED", {})
