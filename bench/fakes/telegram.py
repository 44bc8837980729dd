"""A small fake Telegram Bot API server (aiohttp) for testing the real python-telegram-bot.

It speaks the HTTP side of https://core.telegram.org/bots/api for the methods lorabot uses,
answers with Telegram's JSON shapes, records every call, and can answer 429 with
`retry_after`. Tests drive it from the user side: `send_text` queues an update for
`getUpdates`, `press_button` a callback query, `react` a message reaction; `wait_for` polls the
recorded state.

Like Telegram it rejects what would fail for real: empty or over-long texts, an edit that
changes nothing, formatting that does not parse ("can't parse entities"), inline keyboards of the
wrong shape or with `callback_data` over 64 bytes, a callback query answered twice. Like Telegram
it creates only the update types the bot asked for (`allowed_updates` of getUpdates/setWebhook;
by default no `message_reaction`), and reactions in groups only where the bot is an administrator.

sendMessageDraft (Bot API 9.3/10.0) streams a reply's draft in a private chat: an ephemeral
preview (`draft_ttl_s`, 30 s on Telegram) that each call with the same `draft_id` replaces and
renews, "Thinking…" for an empty text, gone once the bot sends a message there. Drafts count
against the same flood-control windows as messages (the docs give them no budget of their own).
`draft_in` / `seen_by_user` show what the user sees; `lapsed_drafts` records every draft that
expired before the bot renewed it or sent the message.
"""

from __future__ import annotations

import asyncio
import copy
import html.parser
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bench.fakes.limits import Limits, TelegramLimits, whole_seconds

DEFAULT_LIMITS = (
    TelegramLimits()
)  # the Bot API's documented limits; frozen, so one instance serves every fake

BOT_ID = 7000000001
BOT_USERNAME = "lorabot_test_bot"
MAX_TEXT = 4096
DRAFT_TTL_S = 30.0  # "the streamed draft is ephemeral and acts as a temporary 30-second preview"
THINKING = "Thinking…"  # what a client shows for a draft with an empty text

# Parameters that Telegram expects as JSON-serialised objects in form/query encodings.
_JSON_PARAMS = {
    "reply_markup",
    "reply_parameters",
    "link_preview_options",
    "entities",
    "commands",
    "scope",
    "allowed_updates",
}
_INT_PARAMS = {"chat_id", "user_id", "message_id", "offset", "limit", "message_thread_id", "draft_id"}
_FLOAT_PARAMS = {"timeout"}

# Update types Telegram leaves out unless `allowed_updates` names them.
OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})

# The emoji a ReactionTypeEmoji may carry (core.telegram.org/bots/api#reactiontypeemoji).
REACTION_EMOJI = frozenset(
    "👍 👎 ❤ 🔥 🥰 👏 😁 🤔 🤯 😱 🤬 😢 🎉 🤩 🤮 💩 🙏 👌 🕊 🤡 🥱 🥴 😍 🐳 ❤‍🔥 🌚 🌭 💯 🤣 ⚡ 🍌 🏆 💔 "
    "🤨 😐 🍓 🍾 💋 🖕 😈 😴 😭 🤓 👻 👨‍💻 👀 🎃 🙈 😇 😨 🤝 ✍ 🤗 🫡 🎅 🎄 ☃ 💅 🤪 🗿 🆒 💘 🙉 🦄 😘 💊 "
    "🙊 😎 👾 🤷‍♂ 🤷 🤷‍♀ 😡".split()
)
MAX_REACTIONS = 3  # Premium users may set up to 3 reactions on one message
MAX_CALLBACK_DATA = 64  # bytes of an inline button's callback_data
MAX_BUTTONS, MAX_ROW = 100, 8
MAX_CALLBACK_ANSWER = 200  # characters of answerCallbackQuery's text
# An inline keyboard button must have exactly one of these.
_BUTTON_ACTIONS = frozenset(
    {
        "url",
        "callback_data",
        "web_app",
        "login_url",
        "switch_inline_query",
        "switch_inline_query_current_chat",
        "switch_inline_query_chosen_chat",
        "copy_text",
        "callback_game",
        "pay",
    }
)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _utf16_offset(text: str, index: int) -> int:
    return utf16_len(text[:index])


def parse_entities(text: str) -> list[dict[str, Any]]:
    """The entities Telegram finds in a plain user message: bot commands and @mentions."""
    entities = []
    for match in re.finditer(r"(?<![\w/])/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?", text):
        entities.append(("bot_command", match))
    for match in re.finditer(r"(?<![\w@])@[A-Za-z0-9_]{5,32}\b", text):
        entities.append(("mention", match))
    result = []
    for kind, match in sorted(entities, key=lambda item: item[1].start()):
        if kind == "mention" and any(
            other[0] == "bot_command" and other[1].start() <= match.start() < other[1].end()
            for other in entities
        ):
            continue  # the @bot part of /cmd@bot belongs to the command
        result.append(
            {
                "type": kind,
                "offset": _utf16_offset(text, match.start()),
                "length": utf16_len(match.group()),
            }
        )
    return result


class _HTMLCheck(html.parser.HTMLParser):
    allowed = {
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "a",
        "code",
        "pre",
        "span",
        "tg-spoiler",
        "blockquote",
        "tg-emoji",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.error: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag not in self.allowed:
            self.error = f'Unsupported start tag "{tag}"'
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.error = self.error or f'Unmatched end tag "{tag}"'
        else:
            self.stack.pop()


def formatting_error(text: str, parse_mode: str | None) -> str | None:
    """Why Telegram would answer "can't parse entities", or None if the text parses."""
    if not parse_mode:
        return None
    mode = parse_mode.lower()
    if mode == "html":
        if re.search(r"<(?![a-zA-Z/])|&(?![a-zA-Z]+;|#\d+;|#x[0-9a-fA-F]+;)", text):
            return "Can't find end of the entity"
        checker = _HTMLCheck()
        checker.feed(text)
        checker.close()
        if checker.error or checker.stack:
            return checker.error or f'Can\'t find end tag corresponding to start tag "{checker.stack[-1]}"'
        return None
    if mode == "markdownv2":
        unescaped = re.sub(r"\\.", "", text)
        bad = re.search(r"[_*\[\]()~`>#+\-=|{}.!]", unescaped)
        if bad:
            return f"Character '{bad.group()}' is reserved and must be escaped with the preceding '\\'"
        return None
    if mode == "markdown":
        unescaped = re.sub(r"\\.", "", text)
        for mark in ("*", "_", "`"):
            if unescaped.count(mark) % 2:
                return f"Can't find end of the entity starting at byte offset {unescaped.find(mark)}"
        if unescaped.count("[") != unescaped.count("]"):
            return "Can't find end of the entity"
        return None
    return f"Unsupported parse_mode {parse_mode!r}"


@dataclass
class Call:
    """One request the bot made: method name, decoded parameters, HTTP status answered."""

    method: str
    params: dict[str, Any]
    status: int = 200
    at: float = field(default_factory=time.monotonic)


class FakeBotAPI:
    """State of one fake Telegram: chats, users, messages, pending updates and recorded calls."""

    def __init__(
        self,
        token: str = "123456:TEST-token",
        *,
        max_poll_s: float = 0.5,
        limits: TelegramLimits | None = DEFAULT_LIMITS,
        draft_ttl_s: float = DRAFT_TTL_S,
    ) -> None:
        self.token = token
        self.draft_ttl_s = draft_ttl_s
        self.drafts_supported = True  # False: an API server without sendMessageDraft (404)
        self.refuse_drafts: set[int] = set()  # chats whose drafts are refused (400), e.g. by a test
        # (chat id, topic or 0) -> the draft shown now: draft_id, text, at, expires
        self.drafts: dict[tuple[int, int], dict[str, Any]] = {}
        self.draft_log: list[dict[str, Any]] = []  # every draft accepted: chat, topic, draft_id, text, at
        self.lapsed_drafts: list[dict[str, Any]] = []  # drafts that expired while the reply was on its way
        self.limits = limits  # None: no rate limits (only scripted 429s)
        self.rate = Limits()
        self.max_poll_s = max_poll_s  # cap on long-poll waits so tests never hang on shutdown
        self.bot_user = {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": "Lora",
            "username": BOT_USERNAME,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        self.calls: list[Call] = []
        self.chats: dict[int, dict[str, Any]] = {}
        self.admins: dict[int, set[int]] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}  # what is in the chats now
        self.deleted: list[dict[str, Any]] = []  # messages deleted since (delete_message, deleteMessage)
        self.commands: list[dict[str, Any]] = []
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count] = {}
        self._callback_ids = itertools.count(1)
        self._new_update = asyncio.Event()
        self._changed = asyncio.Event()
        self._throttle: dict[str, list[float]] = {}
        self._failures: dict[str, list[tuple[int, str]]] = {}
        self._drops: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.webhook: dict[str, Any] | None = None  # set by setWebhook: updates are POSTed there
        self.deliveries: list[tuple[int, int]] = []  # (update_id, HTTP status) of webhook POSTs
        self._delivery_tasks: set[asyncio.Task] = set()
        self.allowed_updates: list[str] = []  # the bot's choice; [] = Telegram's default
        self.not_created: list[dict[str, Any]] = []  # updates Telegram would not have made (see _push)
        # (chat id, message id) -> actor ("user:<id>" / "chat:<id>") -> emoji set now
        self.reactions: dict[tuple[int, int], dict[str, list[str]]] = {}
        self.callback_answers: dict[str, dict[str, Any] | None] = {}  # query id -> answer (None: not yet)

    @property
    def _bot_as_sender(self) -> dict[str, Any]:
        """A message's `from` carries only the basic User fields (getMe has more)."""
        return _basic_user(self.bot_user)

    # ------------------------------------------------------------------ server lifecycle
    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_route("*", "/file/bot{token}/{path:.*}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for task in self._delivery_tasks:
            task.cancel()
        if self._runner:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # ------------------------------------------------------------------ test-side helpers
    def add_user(self, user_id: int, first_name: str = "User", username: str | None = None) -> dict:
        user = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        self.users[user_id] = user
        return user

    def private_chat(self, user: dict, *, topics: bool = False) -> dict:
        """`topics`: the chat has topics (only then does a draft there take a message_thread_id)."""
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        if topics:
            chat["has_topics"] = True  # the fake's own flag
        self.chats[user["id"]] = chat
        return chat

    def group_chat(
        self,
        chat_id: int,
        title: str = "Group",
        *,
        admins: set[int] = frozenset(),
        forum: bool = False,
        bot_admin: bool = False,
    ) -> dict:
        """A supergroup; `bot_admin`: the bot is one of its administrators (then it gets reactions)."""
        chat = {"id": chat_id, "type": "supergroup", "title": title}
        if forum:
            chat["is_forum"] = True
        self.chats[chat_id] = chat
        self.admins[chat_id] = set(admins) | ({BOT_ID} if bot_admin else set())
        return chat

    def set_bot_admin(self, chat_id: int, admin: bool = True) -> None:
        """Promote the bot to administrator of a group, or demote it."""
        if admin:
            self.admins.setdefault(chat_id, set()).add(BOT_ID)
        else:
            self.admins.get(chat_id, set()).discard(BOT_ID)

    def rate_limit(self, method: str, retry_after: int = 1, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with 429 and `retry_after`."""
        self._throttle.setdefault(method, []).extend([retry_after] * times)

    def fail_next(
        self, method: str, status: int = 502, times: int = 1, description: str = "Bad Gateway"
    ) -> None:
        """Answer the next `times` calls of `method` with an error (e.g. a 5xx of Telegram's edge)."""
        self._failures.setdefault(method, []).extend([(status, description)] * times)

    def delete_message(self, chat_id: int, message_id: int) -> dict[str, Any]:
        """Someone deletes a message: it leaves the chat, and editing it answers 400 "Bad Request:
        message to edit not found", as Telegram does."""
        message = self.messages.pop((chat_id, message_id))
        self.deleted.append(message)
        self._changed.set()
        return message

    def drop_next(self, method: str, times: int = 1) -> None:
        """Carry out the next `times` calls of `method`, then close the connection without an
        answer (a timeout after Telegram took the request)."""
        self._drops[method] = self._drops.get(method, 0) + times

    def send_text(
        self, user: dict, chat: dict, text: str, *, reply_to: dict | None = None, thread_id: int | None = None
    ) -> dict:
        """A user writes `text` in `chat`; queue the update and return the message."""
        message = self._new_message(chat, user, text)
        entities = parse_entities(text)
        if entities:
            message["entities"] = entities
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        self._push({"message": message})
        return message

    def press_button(self, user: dict, message: dict, data: str, *, strict: bool = True) -> str:
        """A user presses an inline keyboard button of a bot message; returns the query's id.

        The query carries the message as it is now (text and keyboard after edits), like
        Telegram's. `strict`: the message must still be there and show a button with `data`, as
        a real client can only press what it shows (False: a hand-crafted query)."""
        key = (message["chat"]["id"], message["message_id"])
        current = self.messages.get(key)
        if strict and current is None:
            raise LookupError(f"message {key} is gone: there is no button to press")
        if strict and data not in self.button_data(current):
            raise LookupError(f"message {key} shows no button with callback_data {data!r}")
        query_id = str(next(self._callback_ids))
        self.callback_answers[query_id] = None
        self._push(
            {
                "callback_query": {
                    "id": query_id,
                    "from": user,
                    "message": copy.deepcopy(current or message),
                    "chat_instance": f"ci{message['chat']['id']}",
                    "data": data,
                }
            }
        )
        return query_id

    @staticmethod
    def button_data(message: dict | None) -> list[str]:
        """The callback_data of a message's inline keyboard buttons, row by row."""
        rows = ((message or {}).get("reply_markup") or {}).get("inline_keyboard") or []
        return [button["callback_data"] for row in rows for button in row if "callback_data" in button]

    def react(
        self, user: dict | None, message: dict, emoji: list[str], *, actor_chat: dict | None = None
    ) -> dict | None:
        """`user` (or, anonymously, `actor_chat`) sets their reactions on `message` to `emoji`
        ([] removes them). Returns the `message_reaction` update, or None where Telegram sends
        none: nothing changed, a bot reacted, the bot is no admin of the group, or the bot did not
        ask for `message_reaction` in `allowed_updates`."""
        chat = message["chat"]
        key = (chat["id"], message["message_id"])
        if key not in self.messages:
            raise LookupError(f"message {key} is gone: nothing to react to")
        self._check_reaction(emoji)
        if (user is None) == (actor_chat is None):
            raise ValueError("a reaction comes from a user or (anonymously) from a chat")
        actor = f"user:{user['id']}" if user is not None else f"chat:{actor_chat['id']}"  # type: ignore[index]
        on_message = self.reactions.setdefault(key, {})
        old = on_message.get(actor, [])
        if emoji:
            on_message[actor] = list(emoji)
        else:
            on_message.pop(actor, None)
        if old == list(emoji):
            return None  # Telegram reports changes only
        reaction: dict[str, Any] = {
            "chat": chat,
            "message_id": message["message_id"],
            "date": int(time.time()),
            "old_reaction": [{"type": "emoji", "emoji": e} for e in old],
            "new_reaction": [{"type": "emoji", "emoji": e} for e in emoji],
        }
        if user is not None:
            reaction["user"] = _basic_user(user)
        else:
            reaction["actor_chat"] = actor_chat
        if (user is not None and user.get("is_bot")) or not self._sees_reactions(chat):
            self.not_created.append({"message_reaction": reaction})
            return None
        update = {"message_reaction": reaction}
        return update if self._push(update) else None

    def reactions_on(self, message: dict) -> dict[str, list[str]]:
        """Who reacted how on a message now ("user:<id>" / "chat:<id>" -> emoji)."""
        return dict(self.reactions.get((message["chat"]["id"], message["message_id"]), {}))

    def callback_answer(self, query_id: str) -> dict[str, Any] | None:
        """What the bot answered to a callback query (text, show_alert), None until it did."""
        return self.callback_answers.get(query_id)

    @staticmethod
    def _check_reaction(emoji: list[str]) -> None:
        unknown = [e for e in emoji if e not in REACTION_EMOJI]
        if unknown:
            raise ValueError(f"Telegram offers no reaction {unknown!r} (see REACTION_EMOJI)")
        if len(emoji) > MAX_REACTIONS or len(set(emoji)) != len(emoji):
            raise ValueError(f"at most {MAX_REACTIONS} different reactions per user")

    def _sees_reactions(self, chat: dict) -> bool:
        """Telegram sends reactions in private chats, and in groups where the bot is an admin."""
        return chat["type"] == "private" or BOT_ID in self.admins.get(chat["id"], set())

    def calls_of(self, method: str, *, ok_only: bool = True, **match: Any) -> list[Call]:
        return [
            call
            for call in self.calls
            if call.method == method
            and (call.status == 200 or not ok_only)
            and all(call.params.get(key) == value for key, value in match.items())
        ]

    def bot_messages(self, chat_id: int) -> list[dict[str, Any]]:
        """The bot's messages in a chat, oldest first, as they look now (after edits)."""
        return [
            message
            for (cid, _), message in sorted(self.messages.items(), key=lambda item: item[0][1])
            if cid == chat_id and message["from"]["id"] == BOT_ID
        ]

    def bot_texts(self, chat_id: int) -> list[str]:
        return [message["text"] for message in self.bot_messages(chat_id)]

    def draft_in(self, chat_id: int, thread_id: int | None = None) -> str | None:
        """The draft the user sees in a chat (topic) now: its text, "Thinking…" for an empty
        one; None when there is none (never sent, replaced by a message, or expired)."""
        draft = self.drafts.get((chat_id, thread_id or 0))
        if draft is None or draft["expires"] <= time.monotonic():
            return None
        return draft["text"] or THINKING

    def seen_by_user(self, chat_id: int) -> list[tuple[str, str]]:
        """What the user sees in a chat: ("message", text) for each of the bot's messages,
        oldest first, then ("draft", text) for a draft still shown under them."""
        seen = [("message", text) for text in self.bot_texts(chat_id)]
        draft = self.draft_in(chat_id)
        return seen + ([("draft", draft)] if draft is not None else [])

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until `predicate()` is truthy (re-checked after every call the bot makes)."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting; calls: {[c.method for c in self.calls][-30:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ internals
    def _wants(self, update: dict[str, Any]) -> bool:
        """Did the bot ask for this kind of update? (Telegram makes no others at all.)"""
        kind = next(key for key in update if key != "update_id")
        if self.allowed_updates:
            return kind in self.allowed_updates
        return kind not in OPT_IN_UPDATES

    def _push(self, update: dict[str, Any]) -> bool:
        """Queue (or POST) an update; False if the bot's `allowed_updates` leave it out."""
        if not self._wants(update):
            self.not_created.append(update)
            return False
        update["update_id"] = next(self._update_ids)
        if self.webhook is not None:
            self._push_existing(update)
            return True
        self._updates.append(update)
        self._new_update.set()
        return True

    async def _deliver(self, update: dict[str, Any], webhook: dict[str, Any]) -> None:
        """POST the update to the bot's webhook like Telegram does (retrying while it is down)."""
        import aiohttp

        headers = {}
        if webhook.get("secret_token"):
            headers["X-Telegram-Bot-Api-Secret-Token"] = webhook["secret_token"]
        async with aiohttp.ClientSession() as session:
            for _ in range(50):
                try:
                    async with session.post(webhook["url"], json=update, headers=headers) as response:
                        self.deliveries.append((update["update_id"], response.status))
                        self._changed.set()
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)

    def _new_message(self, chat: dict, sender: dict, text: str) -> dict[str, Any]:
        counter = self._message_ids.setdefault(chat["id"], itertools.count(1))
        message = {
            "message_id": next(counter),
            "from": sender,
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        self.messages[(chat["id"], message["message_id"])] = message
        return message

    async def _params(self, request: web.Request) -> dict[str, Any]:
        raw: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                raw.update(await request.json())
            else:
                raw.update({key: value for key, value in (await request.post()).items()})
        params: dict[str, Any] = {}
        for key, value in raw.items():
            if isinstance(value, str):
                if key in _JSON_PARAMS:
                    value = json.loads(value)
                elif key in _INT_PARAMS and re.fullmatch(r"-?\d+", value):
                    value = int(value)
                elif key in _FLOAT_PARAMS:
                    value = float(value)
                elif value in ("true", "false"):
                    value = value == "true"
            params[key] = value
        return params

    async def _file(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        call = Call(method, params)
        self.calls.append(call)
        try:
            if request.match_info["token"] != self.token:
                call.status = 401
                return self._error(401, "Unauthorized")
            failures = self._failures.get(method)
            if failures:
                status, description = failures.pop(0)
                call.status = status
                return self._error(status, description)
            throttle = self._throttle.get(method)
            if throttle:
                retry_after = throttle.pop(0)
                call.status = 429
                return self._error(
                    429,
                    f"Too Many Requests: retry after {retry_after}",
                    parameters={"retry_after": retry_after},
                )
            wait = self._over_limit(method, params)
            if wait:
                call.status = 429
                seconds = whole_seconds(wait)
                return self._error(
                    429, f"Too Many Requests: retry after {seconds}", parameters={"retry_after": seconds}
                )
            handler = getattr(self, f"_api_{method}", None)
            if handler is None:
                call.status = 404
                return self._error(404, "Not Found: method not found")
            try:
                result = await handler(params)
            except _APIError as error:
                call.status = error.code
                return self._error(error.code, error.description)
            if self._drops.get(method):
                self._drops[method] -= 1
                assert request.transport is not None
                request.transport.close()  # done, but the answer never comes
            return web.json_response({"ok": True, "result": result})
        finally:
            self._changed.set()

    _LIMITED = frozenset(
        {"sendMessage", "sendMessageDraft", "editMessageText", "editMessageReplyMarkup", "sendChatAction"}
    )

    def _over_limit(self, method: str, params: dict[str, Any]) -> float:
        """Telegram's flood control: seconds to wait if this call is over a limit, else 0."""
        if self.limits is None or method not in self._LIMITED:
            return 0.0
        chat = self.chats.get(params.get("chat_id"))  # type: ignore[arg-type]
        limits = self.limits
        windows = [self.rate.window("overall", limits.overall_per_second, 1.0)]
        if method == "sendChatAction":  # no message: only the overall limit applies
            return self.rate.check(windows)
        if chat is not None and chat["type"] == "private":
            windows.append(self.rate.window(f"chat:{chat['id']}", limits.private_per_3s, 3.0))
        elif chat is not None:
            windows.append(self.rate.window(f"chat:{chat['id']}", limits.group_per_minute, 60.0))
        return self.rate.check(windows)

    @staticmethod
    def _error(code: int, description: str, parameters: dict | None = None) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=code)

    def _chat(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self.chats.get(params.get("chat_id"))  # type: ignore[arg-type]
        if chat is None:
            raise _APIError(400, "Bad Request: chat not found")
        return chat

    @staticmethod
    def _check_text(text: Any, parse_mode: str | None) -> str:
        if not isinstance(text, str) or not text.strip():
            raise _APIError(400, "Bad Request: message text is empty")
        if utf16_len(text.strip()) > MAX_TEXT:
            raise _APIError(400, "Bad Request: message is too long")
        problem = formatting_error(text, parse_mode)
        if problem:
            raise _APIError(400, f"Bad Request: can't parse entities: {problem}")
        return text

    @staticmethod
    def _check_markup(markup: Any, *, inline_only: bool = False) -> dict[str, Any] | None:
        """The reply_markup as Telegram would take it; 400 with Telegram's wording otherwise."""
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise _APIError(400, "Bad Request: can't parse reply keyboard markup JSON object")
        if "inline_keyboard" not in markup:
            if inline_only or not {"keyboard", "remove_keyboard", "force_reply"} & markup.keys():
                raise _APIError(400, "Bad Request: inline keyboard expected")
            return markup
        rows = markup["inline_keyboard"]
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise _APIError(400, 'Bad Request: field "inline_keyboard" must be an Array of Arrays')
        buttons = [button for row in rows for button in row]
        if len(buttons) > MAX_BUTTONS or any(len(row) > MAX_ROW for row in rows):
            raise _APIError(400, "Bad Request: reply markup is too long")
        for button in buttons:
            FakeBotAPI._check_button(button)
        return markup

    @staticmethod
    def _check_button(button: Any) -> None:
        if not isinstance(button, dict) or not isinstance(button.get("text"), str) or not button["text"]:
            raise _APIError(400, "Bad Request: can't parse inline keyboard button: Text must be non-empty")
        actions = _BUTTON_ACTIONS & button.keys()
        if len(actions) != 1:
            raise _APIError(
                400,
                "Bad Request: can't parse inline keyboard button: "
                "Text buttons are unallowed in the inline keyboard",
            )
        if "callback_data" in actions:
            data = button["callback_data"]
            if not isinstance(data, str) or not 1 <= len(data.encode()) <= MAX_CALLBACK_DATA:
                raise _APIError(400, "Bad Request: BUTTON_DATA_INVALID")

    def _bot_message(self, params: dict[str, Any]) -> dict[str, Any]:
        """The bot's message an edit names (Telegram's errors for a missing or foreign one)."""
        chat = self._chat(params)
        message = self.messages.get((chat["id"], params.get("message_id")))
        if message is None:
            raise _APIError(400, "Bad Request: message to edit not found")
        if message["from"]["id"] != BOT_ID:
            raise _APIError(400, "Bad Request: message can't be edited")
        return message

    # ------------------------------------------------------------------ Bot API methods
    async def _api_getMe(self, params):
        return self.bot_user

    async def _api_deleteWebhook(self, params):
        if params.get("drop_pending_updates"):
            self._updates.clear()
        self.webhook = None
        return True

    async def _api_setWebhook(self, params):
        url = params.get("url") or ""
        if not url:
            self.webhook = None
            return True
        if not re.fullmatch(r"https?://\S+", url):
            raise _APIError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
            raise _APIError(400, "Bad Request: secret token contains unallowed characters")
        if params.get("drop_pending_updates"):
            self._updates.clear()
        self._remember_allowed(params)
        self.webhook = {"url": url, "secret_token": secret, "allowed_updates": params.get("allowed_updates")}
        pending, self._updates = self._updates, []
        for update in pending:  # what waited for getUpdates now goes to the webhook
            self._push_existing(update)
        return True

    def _push_existing(self, update: dict[str, Any]) -> None:
        """Deliver an update that already has its id to the webhook."""
        task = asyncio.get_running_loop().create_task(self._deliver(update, dict(self.webhook or {})))
        self._delivery_tasks.add(task)
        task.add_done_callback(self._delivery_tasks.discard)

    async def _api_setMyCommands(self, params):
        commands = params.get("commands") or []
        for command in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", command.get("command", "")):
                raise _APIError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(command.get("description", "")) <= 256:
                raise _APIError(400, "Bad Request: command description is invalid")
        self.commands = commands
        return True

    def _remember_allowed(self, params: dict[str, Any]) -> None:
        """`allowed_updates` holds until the next call that names it ([] = the default set)."""
        if params.get("allowed_updates") is not None:
            self.allowed_updates = list(params["allowed_updates"])

    async def _api_getUpdates(self, params):
        if self.webhook is not None:
            raise _APIError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        self._remember_allowed(params)
        offset = params.get("offset") or 0
        if offset:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        timeout = min(float(params.get("timeout") or 0), self.max_poll_s)
        if not self._updates and timeout > 0:
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), timeout)
            except TimeoutError:
                pass
        limit = params.get("limit") or 100
        return self._updates[:limit]

    async def _api_sendMessage(self, params):
        chat = self._chat(params)
        text = self._check_text(params.get("text"), params.get("parse_mode"))
        markup = self._check_markup(params.get("reply_markup"))
        message = self._new_message(chat, self._bot_as_sender, text.strip())
        reply = params.get("reply_parameters") or {}
        if "reply_to_message_id" in params:
            reply = {"message_id": int(params["reply_to_message_id"])}
        if reply:
            original = self.messages.get((chat["id"], reply["message_id"]))
            if original is None and not reply.get("allow_sending_without_reply"):
                raise _APIError(400, "Bad Request: message to be replied not found")
            if original is not None:
                message["reply_to_message"] = {k: v for k, v in original.items() if k != "reply_to_message"}
        if params.get("message_thread_id"):
            message["message_thread_id"] = params["message_thread_id"]
            message["is_topic_message"] = True
        if markup:
            message["reply_markup"] = markup
        if params.get("parse_mode"):
            message["parse_mode_used"] = params["parse_mode"]  # not Telegram's; for assertions
        self._end_draft(chat["id"], params.get("message_thread_id") or 0)  # the message takes its place
        return message

    def _end_draft(self, chat_id: int, thread: int) -> None:
        draft = self.drafts.pop((chat_id, thread), None)
        if draft is not None and draft["expires"] <= time.monotonic():
            self.lapsed_drafts.append(draft)

    async def _api_sendMessageDraft(self, params):
        """A private chat's draft: text of 0-4096 UTF-16 units ("" shows "Thinking…"), a
        non-zero draft_id; each call renews it for `draft_ttl_s`."""
        if not self.drafts_supported:
            raise _APIError(404, "Not Found: method not found")
        chat = self._chat(params)
        if chat["type"] != "private" or chat["id"] in self.refuse_drafts:
            raise _APIError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
        draft_id = params.get("draft_id")
        if not isinstance(draft_id, int) or isinstance(draft_id, bool) or draft_id == 0:
            raise _APIError(400, "Bad Request: draft_id must be non-zero")
        text = params.get("text") or ""
        if not isinstance(text, str):
            raise _APIError(400, "Bad Request: text must be a string")
        if utf16_len(text.strip()) > MAX_TEXT:
            raise _APIError(400, "Bad Request: text is too long")
        problem = formatting_error(text, params.get("parse_mode"))
        if problem:
            raise _APIError(400, f"Bad Request: can't parse entities: {problem}")
        thread = params.get("message_thread_id") or 0
        if thread and not chat.get("has_topics"):
            raise _APIError(400, "Bad Request: message thread not found")
        now = time.monotonic()
        key = (chat["id"], thread)
        previous = self.drafts.get(key)
        if previous is not None and previous["draft_id"] == draft_id and previous["expires"] <= now:
            self.lapsed_drafts.append(previous)  # the user saw it vanish before this one came
        draft = {"chat_id": chat["id"], "thread": thread, "draft_id": draft_id, "text": text.strip()}
        draft["at"] = now
        self.draft_log.append(draft)
        self.drafts[key] = dict(draft, expires=now + self.draft_ttl_s)
        return True

    async def _api_editMessageText(self, params):
        """An edit without reply_markup removes the inline keyboard, as on Telegram."""
        message = self._bot_message(params)
        text = self._check_text(params.get("text"), params.get("parse_mode"))
        markup = self._check_markup(params.get("reply_markup"), inline_only=True)
        if text.strip() == message["text"] and markup == message.get("reply_markup"):
            raise _APIError(400, _NOT_MODIFIED)
        message["text"] = text.strip()
        message["edit_date"] = int(time.time())
        self._set_markup(message, markup)
        return message

    async def _api_editMessageReplyMarkup(self, params):
        message = self._bot_message(params)
        markup = self._check_markup(params.get("reply_markup"), inline_only=True)
        if markup == message.get("reply_markup"):
            raise _APIError(400, _NOT_MODIFIED)
        message["edit_date"] = int(time.time())
        self._set_markup(message, markup)
        return message

    @staticmethod
    def _set_markup(message: dict[str, Any], markup: dict[str, Any] | None) -> None:
        if markup and markup.get("inline_keyboard"):
            message["reply_markup"] = markup
        else:  # an empty keyboard is no keyboard
            message.pop("reply_markup", None)

    async def _api_deleteMessage(self, params):
        chat = self._chat(params)
        if (chat["id"], params.get("message_id")) not in self.messages:
            raise _APIError(400, "Bad Request: message to delete not found")
        self.deleted.append(self.messages.pop((chat["id"], params["message_id"])))
        return True

    async def _api_sendChatAction(self, params):
        self._chat(params)
        if params.get("action") not in {
            "typing",
            "upload_photo",
            "record_video",
            "upload_video",
            "record_voice",
            "upload_voice",
            "upload_document",
            "choose_sticker",
            "find_location",
            "record_video_note",
            "upload_video_note",
        }:
            raise _APIError(400, "Bad Request: wrong parameter action in request")
        return True

    async def _api_answerCallbackQuery(self, params):
        """Once per query, like Telegram; the text is a toast (an alert with show_alert)."""
        query_id = str(params.get("callback_query_id") or "")
        if query_id not in self.callback_answers or self.callback_answers[query_id] is not None:
            raise _APIError(
                400, "Bad Request: query is too old and response timeout expired or query ID is invalid"
            )
        if len(params.get("text") or "") > MAX_CALLBACK_ANSWER:
            raise _APIError(400, "Bad Request: MESSAGE_TOO_LONG")
        self.callback_answers[query_id] = {
            "text": params.get("text") or "",
            "show_alert": bool(params.get("show_alert")),
        }
        return True

    def _member(self, chat_id: int, user_id: int) -> dict[str, Any]:
        user = self.users.get(user_id) or (self.bot_user if user_id == BOT_ID else None)
        if user is None:
            raise _APIError(400, "Bad Request: user not found")
        admins = self.admins.get(chat_id, set())
        if user_id in admins:
            return {
                "status": "administrator",
                "user": user,
                "can_be_edited": False,
                "is_anonymous": False,
                "can_manage_chat": True,
                "can_delete_messages": True,
                "can_manage_video_chats": True,
                "can_restrict_members": True,
                "can_promote_members": False,
                "can_change_info": True,
                "can_invite_users": True,
                "can_post_stories": False,
                "can_edit_stories": False,
                "can_delete_stories": False,
            }
        return {"status": "member", "user": user}

    async def _api_getChatMember(self, params):
        chat = self._chat(params)
        return self._member(chat["id"], params.get("user_id"))

    async def _api_getChatAdministrators(self, params):
        chat = self._chat(params)
        return [self._member(chat["id"], user_id) for user_id in sorted(self.admins.get(chat["id"], ()))]


def _basic_user(user: dict[str, Any]) -> dict[str, Any]:
    """The User fields that updates carry (getMe has more)."""
    return {key: user[key] for key in ("id", "is_bot", "first_name", "username", "last_name") if key in user}


_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply "
    "markup are exactly the same as a current content and reply markup of the message"
)


class _APIError(Exception):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
