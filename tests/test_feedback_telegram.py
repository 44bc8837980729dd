"""Feedback on Telegram (issue 23): 👍/👎 buttons and reactions, 🔁, /forget and /feedback, with the
real python-telegram-bot against the fake Bot API, checked in the SQLite database itself."""

from __future__ import annotations

import itertools
import logging

import pytest
import test_telegram
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import BadRequest
from test_telegram import ALICE, BOB, BOT_USERNAME, CAROL, GROUP, running_bot

from bench.fakes.telegram import FakeBotAPI
from support.ratings import rows, stored_ratings, until_ratings
from support.waiting import until

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning")

OTHER_GROUP = -1009876543210
fake = test_telegram.fake  # the fixture: a fake Bot API that knows alice, bob and carol


# -- helpers --------------------------------------------------------------------------------------
def rater(service, user_id: int) -> str:
    return service.pseudonym(f"telegram:{user_id}")


def with_buttons(fake: FakeBotAPI, chat_id: int, text: str | None = None):
    """The bot's message that ends a final reply (it carries 👍 👎 🔁), once it is there."""

    def find():
        for message in reversed(fake.bot_messages(chat_id)):
            if any(data.startswith("fb:") for data in fake.button_data(message)):
                if text is None or message["text"] == text:
                    return message
        return None

    return find


def turn_of(fake: FakeBotAPI, message: dict) -> int:
    return int(fake.button_data(message)[0].rsplit(":", 1)[1])


async def ask(fake: FakeBotAPI, user: dict, chat: dict, text: str) -> dict:
    """`user` asks in `chat`; returns the final reply's (last) message, with its buttons."""
    before = {m["message_id"] for m in fake.bot_messages(chat["id"])}
    fake.send_text(user, chat, text if chat["type"] == "private" else f"@{BOT_USERNAME} {text}")

    def new_reply() -> dict | None:
        message = with_buttons(fake, chat["id"])()
        return message if message is not None and message["message_id"] not in before else None

    return await fake.wait_for(new_reply)


async def press(fake: FakeBotAPI, user: dict, message: dict, data: str, **kwargs) -> dict:
    """Press a button and wait for the bot's answer to the query (toast or alert)."""
    query = fake.press_button(user, message, data, **kwargs)
    return await fake.wait_for(lambda: fake.callback_answer(query), timeout=15)


def numbered(request) -> str:
    """Scripted answers that differ (in their first word too), so 🔁 shows something new."""
    return f"Answer{next(_counter)} to {request.messages[-1]['content']}"


_counter = itertools.count(1)


# -- the fake Bot API itself ----------------------------------------------------------------------
async def test_fake_rejects_bad_keyboards_and_second_answers_and_sends_no_unasked_reactions(fake):
    bot = Bot(fake.token, base_url=fake.base_url)
    chat = fake.private_chat(fake.alice)
    async with bot:
        too_long = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="d" * 65)]])
        with pytest.raises(BadRequest, match="(?i)button_data_invalid"):
            await bot.send_message(ALICE, "hi", reply_markup=too_long)
        fits = InlineKeyboardMarkup([[InlineKeyboardButton("👍", callback_data="é" * 32)]])  # 64 bytes
        sent = await bot.send_message(ALICE, "hi", reply_markup=fits)
        query = fake.press_button(fake.alice, fake.messages[(ALICE, sent.message_id)], "é" * 32)
        assert await bot.answer_callback_query(query, "ok")
        with pytest.raises(BadRequest, match="(?i)query is too old"):
            await bot.answer_callback_query(query, "again")
        await bot.edit_message_reply_markup(chat_id=ALICE, message_id=sent.message_id, reply_markup=None)
        assert "reply_markup" not in fake.messages[(ALICE, sent.message_id)]
        with pytest.raises(LookupError):  # a client can only press what it shows
            fake.press_button(fake.alice, fake.messages[(ALICE, sent.message_id)], "é" * 32)

        mine = fake.send_text(fake.alice, chat, "a message")
        assert fake.react(fake.alice, mine, ["👍"]) is None  # not in allowed_updates (the default)
        await bot.get_updates(allowed_updates=["message", "message_reaction"])
        update = fake.react(fake.alice, mine, ["👎"])
        assert update is not None
        reaction = update["message_reaction"]
        assert [r["emoji"] for r in reaction["old_reaction"]] == ["👍"]
        assert [r["emoji"] for r in reaction["new_reaction"]] == ["👎"]
        group = fake.group_chat(GROUP, "Club")
        in_group = fake.send_text(fake.alice, group, "hello group")
        assert fake.react(fake.bob, in_group, ["👍"]) is None  # the bot is no admin there
        fake.set_bot_admin(GROUP)
        assert fake.react(fake.carol, in_group, ["👍"]) is not None
        with pytest.raises(ValueError):
            fake.react(fake.alice, in_group, ["🙂"])  # not a reaction Telegram offers


# -- buttons --------------------------------------------------------------------------------------
async def test_buttons_rate_change_and_duplicate_presses_count_once(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="Paris.") as service:
        reply = await ask(fake, fake.alice, fake.private_chat(fake.alice), "capital of France?")
        assert reply["text"] == "Paris."
        turn = turn_of(fake, reply)
        assert fake.button_data(reply) == [f"fb:up:{turn}", f"fb:down:{turn}", f"fb:again:{turn}"]
        assert [b["text"] for b in reply["reply_markup"]["inline_keyboard"][0]] == ["👍", "👎", "🔁"]
        assert len(fake.bot_messages(ALICE)) == 1  # the buttons rode with the reply: no extra message

        assert await press(fake, fake.alice, reply, f"fb:up:{turn}") == {
            "text": "Thanks — noted 👍",
            "show_alert": False,
        }
        for _ in range(3):  # pressed again and again: still one 👍
            await press(fake, fake.alice, reply, f"fb:up:{turn}")
        await until_ratings(service, {(turn, 0, rater(service, ALICE), 1)})

        assert (await press(fake, fake.alice, reply, f"fb:down:{turn}"))["text"] == "Thanks — noted 👎"
        await until_ratings(service, {(turn, 0, rater(service, ALICE), -1)})
        assert not rows(service, "SELECT * FROM ratings WHERE rater_key LIKE 'telegram:%'")  # pseudonyms only


async def test_without_feedback_only_regenerate_is_offered(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="ok", feedback=False) as service:
        chat = fake.private_chat(fake.alice)
        reply = await ask(fake, fake.alice, chat, "hi")
        assert [data.split(":")[1] for data in fake.button_data(reply)] == ["again"]
        fake.react(fake.alice, reply, ["👍"])
        turn = turn_of(fake, reply)
        answer = await press(fake, fake.alice, reply, f"fb:up:{turn}", strict=False)  # an old button
        assert answer["text"] == "Ratings are turned off for this bot."
        assert await stored_ratings(service) == set()


# -- reactions ------------------------------------------------------------------------------------
async def test_reactions_rate_change_and_remove_only_what_they_set(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="Forty-two.") as service:
        assert "message_reaction" in fake.allowed_updates
        reply = await ask(fake, fake.alice, fake.private_chat(fake.alice), "meaning of life?")
        turn, alice = turn_of(fake, reply), rater(service, ALICE)
        fake.react(fake.alice, reply, ["👍"])
        await until_ratings(service, {(turn, 0, alice, 1)})
        fake.react(fake.alice, reply, ["👎"])  # changed
        await until_ratings(service, {(turn, 0, alice, -1)})
        fake.react(fake.alice, reply, ["👎", "🔥"])  # another emoji next to it changes nothing
        fake.react(fake.alice, reply, [])  # removed
        await until_ratings(service, set())

        # 👍 reaction, then the 👎 button: removing the 👍 reaction must not delete the 👎
        fake.react(fake.alice, reply, ["👍"])
        await until_ratings(service, {(turn, 0, alice, 1)})
        await press(fake, fake.alice, reply, f"fb:down:{turn}")
        await until_ratings(service, {(turn, 0, alice, -1)})
        fake.react(fake.alice, reply, [])
        await press(fake, fake.alice, reply, f"fb:down:{turn}")  # answered: the removal was handled
        assert await stored_ratings(service) == {(turn, 0, alice, -1)}


async def test_reactions_in_groups_arrive_only_where_the_bot_is_admin(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="Group answer.") as service:
        plain = fake.group_chat(GROUP, "Plain")
        admin = fake.group_chat(OTHER_GROUP, "Bot is admin here", bot_admin=True)
        in_plain = await ask(fake, fake.alice, plain, "hi")
        in_admin = await ask(fake, fake.alice, admin, "hi")
        assert fake.react(fake.bob, in_plain, ["👍"]) is None  # Telegram does not send it
        assert fake.react(fake.bob, in_admin, ["👍"]) is not None
        await until_ratings(service, {(turn_of(fake, in_admin), 0, rater(service, BOB), 1)})
        # buttons work in every group
        await press(fake, fake.carol, in_plain, f"fb:down:{turn_of(fake, in_plain)}")
        await until_ratings(
            service,
            {
                (turn_of(fake, in_admin), 0, rater(service, BOB), 1),
                (turn_of(fake, in_plain), 0, rater(service, CAROL), -1),
            },
        )


async def test_several_raters_in_a_group_each_count_once(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="Shared answer.") as service:
        group = fake.group_chat(GROUP, "Club", bot_admin=True)
        reply = await ask(fake, fake.bob, group, "what do you think?")
        turn = turn_of(fake, reply)
        fake.react(fake.alice, reply, ["👍"])
        await press(fake, fake.alice, reply, f"fb:up:{turn}")  # reaction and button: one person
        fake.react(fake.bob, reply, ["👎"])
        await press(fake, fake.carol, reply, f"fb:up:{turn}")
        await press(fake, fake.carol, reply, f"fb:up:{turn}")
        await until_ratings(
            service,
            {
                (turn, 0, rater(service, ALICE), 1),
                (turn, 0, rater(service, BOB), -1),
                (turn, 0, rater(service, CAROL), 1),
            },
        )


async def test_reactions_that_rate_nothing_are_ignored(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with running_bot(fake, tmp_path, reply="An answer.") as service:
        group = fake.group_chat(GROUP, "Club", bot_admin=True)
        reply = await ask(fake, fake.alice, group, "hi")
        human = fake.send_text(fake.bob, group, "a human message")
        sent = len(fake.calls_of("sendMessage"))
        anonymous = fake.add_user(1087968824, "Group", "GroupAnonymousBot")
        anonymous["is_bot"] = True
        other_bot = fake.add_user(5550001, "Other bot", "other_bot")
        other_bot["is_bot"] = True

        fake.react(fake.alice, human, ["👍"])  # not a bot message: no turn
        fake.react(fake.carol, reply, ["🔥", "🎉"])  # no 👍/👎
        assert fake.react(None, reply, ["👍"], actor_chat=group) is not None  # anonymous: no rater
        assert fake.react(other_bot, reply, ["👍"]) is None  # Telegram sends no reactions of bots
        fake.react(fake.carol, reply, ["👎"])  # the one that counts, handled after the others
        await until_ratings(service, {(turn_of(fake, reply), 0, rater(service, CAROL), -1)})
        await until(lambda: "is not a stored reply" in caplog.text, timeout=10)
        assert f"{GROUP}:{human['message_id']}" in caplog.text
        assert len(fake.calls_of("sendMessage")) == sent  # nothing said about them


async def test_a_flood_of_reaction_toggles_ends_in_the_last_state(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="Toggle me.") as service:
        group = fake.group_chat(GROUP, "Club", bot_admin=True)
        reply = await ask(fake, fake.alice, group, "flood")
        turn = turn_of(fake, reply)
        calls_before = len(fake.calls_of("sendMessage")) + len(fake.calls_of("editMessageText"))
        toggles = list(itertools.islice(itertools.cycle([["👍"], ["👎"], []]), 50))
        assert toggles[-1] == ["👎"]
        for emoji in toggles:
            fake.react(fake.alice, reply, emoji)
        await press(fake, fake.bob, reply, f"fb:up:{turn}")  # handled after all 50
        assert await stored_ratings(service) == {
            (turn, 0, rater(service, ALICE), -1),
            (turn, 0, rater(service, BOB), 1),
        }
        # reactions cost no Bot API call, so they never compete with replies for the rate limits
        assert len(fake.calls_of("sendMessage")) + len(fake.calls_of("editMessageText")) == calls_before


# -- regenerate -----------------------------------------------------------------------------------
async def test_regenerate_replaces_the_answer_in_place_then_rates_the_new_one(fake, tmp_path):
    long_first = ("Long first answer. " + "word " * 1200).strip()  # over 4096: two messages
    answers = iter([long_first, "Second answer, short."])
    async with running_bot(fake, tmp_path, reply=lambda request: next(answers)) as service:
        chat = fake.private_chat(fake.alice)
        last = await ask(fake, fake.alice, chat, "tell me")
        first_messages = [m["message_id"] for m in fake.bot_messages(ALICE)]
        assert len(first_messages) == 2 and last["message_id"] == first_messages[-1]
        turn = turn_of(fake, last)

        answer = await press(fake, fake.alice, last, f"fb:again:{turn}")
        assert answer == {"text": "", "show_alert": False}
        new = await fake.wait_for(with_buttons(fake, ALICE, "Second answer, short."))
        assert new["message_id"] == first_messages[0]  # the first message, edited in place
        await fake.wait_for(lambda: [m["message_id"] for m in fake.deleted] == [first_messages[1]])
        assert turn_of(fake, new) == turn
        assert not fake.calls_of("sendMessage", chat_id=ALICE)[2:]  # no new message was sent

        await press(fake, fake.alice, new, f"fb:up:{turn}")
        await until_ratings(service, {(turn, 1, rater(service, ALICE), 1)})
        assert rows(service, "SELECT answer, version FROM turns WHERE id = ?", turn) == [(new["text"], 1)]
        assert rows(service, "SELECT version, answer FROM answer_versions WHERE turn_id = ?", turn) == [
            (0, long_first.strip())
        ]


async def test_regenerate_of_an_older_answer_is_refused_and_leaves_it(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply=numbered) as service:
        chat = fake.private_chat(fake.alice)
        older = await ask(fake, fake.alice, chat, "one")
        await ask(fake, fake.alice, chat, "two")
        shown = older["text"]
        answer = await press(fake, fake.alice, older, f"fb:again:{turn_of(fake, older)}")
        assert answer["show_alert"] is True and answer["text"].startswith("⚠️")
        assert fake.messages[(ALICE, older["message_id"])]["text"] == shown
        assert fake.button_data(fake.messages[(ALICE, older["message_id"])])  # buttons still there
        assert rows(service, "SELECT COUNT(*) FROM answer_versions") == [(0,)]


async def test_regenerate_in_a_group_pressed_twice_runs_once(fake, tmp_path):
    async with running_bot(
        fake, tmp_path, reply=lambda request: f"@alice_w {numbered(request)}", token_delay_s=0.05
    ) as service:
        group = fake.group_chat(GROUP, "Club")
        reply = await ask(fake, fake.alice, group, "hello")
        turn, old = turn_of(fake, reply), reply["text"]
        first = fake.press_button(fake.bob, reply, f"fb:again:{turn}")
        second = fake.press_button(fake.carol, reply, f"fb:again:{turn}")  # while the first runs
        await fake.wait_for(lambda: fake.callback_answer(first) and fake.callback_answer(second))
        answers = [fake.callback_answer(first), fake.callback_answer(second)]
        assert sorted(answer["show_alert"] for answer in answers) == [False, True]  # one is refused

        def replaced() -> dict | None:
            message = with_buttons(fake, GROUP)()
            return message if message is not None and message["text"] != old else None

        new = await fake.wait_for(replaced)
        assert new["message_id"] == reply["message_id"] and len(fake.bot_messages(GROUP)) == 1
        assert new["text"].startswith("@\u2060alice_w Answer")  # mentions defused, as in every group reply
        assert rows(service, "SELECT version FROM answer_versions WHERE turn_id = ?", turn) == [(0,)]


# -- restarts, unknown turns ------------------------------------------------------------------------
async def test_a_reply_from_before_a_restart_can_be_rated(fake, tmp_path):
    group = fake.group_chat(GROUP, "Club", bot_admin=True)
    async with running_bot(fake, tmp_path, reply="Before the restart."):
        reply = await ask(fake, fake.alice, group, "hi")
    turn = turn_of(fake, reply)
    async with running_bot(fake, tmp_path, reply="After.") as service:  # a new process, same database
        await press(fake, fake.bob, reply, f"fb:up:{turn}")
        fake.react(fake.alice, reply, ["👎"])
        await until_ratings(
            service, {(turn, 0, rater(service, BOB), 1), (turn, 0, rater(service, ALICE), -1)}
        )


async def test_rating_an_unknown_or_deleted_turn_is_ignored_and_logged(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with running_bot(fake, tmp_path, reply="Soon forgotten.") as service:
        chat = fake.private_chat(fake.alice)
        reply = await ask(fake, fake.alice, chat, "hi")
        turn = turn_of(fake, reply)
        await press(fake, fake.alice, reply, "fb:up:987654", strict=False)  # a crafted query
        await service.feedback_flushed()
        await until(lambda: "rating ignored: turn 987654 is not stored" in caplog.text, timeout=10)

        fake.send_text(fake.alice, chat, "/forget yes")
        await fake.wait_for(lambda: fake.bot_texts(ALICE)[-1].startswith("🧹 Deleted 1 question"))
        await press(fake, fake.alice, reply, f"fb:down:{turn}")  # its buttons are still on screen
        fake.react(fake.alice, reply, ["👍"])
        await until(lambda: "is not a stored reply" in caplog.text, timeout=10)
        assert await stored_ratings(service) == set()
        assert f"rating ignored: turn {turn} is not stored" in caplog.text


# -- privacy ----------------------------------------------------------------------------------------
def traces(service, user_id: int, texts: list[str]) -> list[tuple[str, str]]:
    """Every cell of every table that points at the user: their pseudonym, a platform id of theirs,
    or a text they wrote (or that answered them)."""
    marks = [service.pseudonym(f"telegram:{user_id}"), f"telegram:{user_id}", f"{user_id}:", *texts]
    found = []
    for (table,) in rows(service, "SELECT name FROM sqlite_master WHERE type = 'table'"):
        for row in rows(service, f'SELECT * FROM "{table}"'):
            found += [(table, str(cell)) for cell in row if any(mark in str(cell) for mark in marks)]
    return found


async def test_forget_in_a_private_chat_and_a_group_leaves_nothing_of_the_user(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply=numbered) as service:
        group = fake.group_chat(GROUP, "Club", bot_admin=True)
        private = await ask(fake, fake.alice, fake.private_chat(fake.alice), "alice private question")
        alices = await ask(fake, fake.alice, group, "alice group question")
        bobs = await ask(fake, fake.bob, group, "bob group question")
        await press(fake, fake.alice, private, f"fb:up:{turn_of(fake, private)}")
        await press(fake, fake.alice, bobs, f"fb:down:{turn_of(fake, bobs)}")
        fake.react(fake.bob, alices, ["👍"])
        fake.react(fake.bob, bobs, ["👍"])
        await until(lambda: len(rows(service, "SELECT * FROM ratings")) == 4, timeout=10)
        alice_texts = ["alice private question", "alice group question", private["text"], alices["text"]]
        assert traces(service, ALICE, alice_texts)

        fake.send_text(fake.alice, fake.chats[ALICE], "/forget")  # asks first, with a button
        confirm = await fake.wait_for(
            lambda: next((m for m in fake.bot_messages(ALICE) if "forget:yes" in fake.button_data(m)), None)
        )
        assert await press(fake, fake.alice, confirm, "forget:yes")
        await fake.wait_for(lambda: fake.messages[(ALICE, confirm["message_id"])]["text"].startswith("🧹"))
        assert "reply_markup" not in fake.messages[(ALICE, confirm["message_id"])]  # answered once
        assert traces(service, ALICE, alice_texts) == []
        # Bob's question, answer and rating stay; what was about Alice went with her
        assert await stored_ratings(service) == {(turn_of(fake, bobs), 0, rater(service, BOB), 1)}
        assert rows(service, "SELECT question FROM turns") == [("bob group question",)]

        # Bob forgets himself from the group, with the argument: no question asked
        fake.send_text(fake.bob, group, "/forget yes")
        await fake.wait_for(lambda: fake.bot_texts(GROUP)[-1].startswith("🧹 Deleted 1 question"))
        assert traces(service, BOB, ["bob group question", bobs["text"]]) == []
        assert rows(service, "SELECT COUNT(*) FROM turns") == [(0,)]


async def test_feedback_off_then_ratings_are_not_stored(fake, tmp_path):
    async with running_bot(fake, tmp_path, reply="Rate me.") as service:
        chat = fake.private_chat(fake.alice)
        reply = await ask(fake, fake.alice, chat, "hi")
        turn = turn_of(fake, reply)
        await press(fake, fake.alice, reply, f"fb:up:{turn}")
        await until_ratings(service, {(turn, 0, rater(service, ALICE), 1)})

        fake.send_text(fake.alice, chat, "/feedback off")
        await fake.wait_for(lambda: "not kept" in fake.bot_texts(ALICE)[-1])
        await until_ratings(service, set())  # turning it off deleted what was there
        fake.react(fake.alice, reply, ["👍"])
        answer = await press(fake, fake.alice, reply, f"fb:down:{turn}")  # after the reaction
        assert "feedback off" in answer["text"]
        assert await stored_ratings(service) == set()
