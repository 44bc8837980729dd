"""Feedback on Discord (issue 23): 👍/👎 reactions and buttons, 🔁, with the real discord.py client
against the fake Discord (bench/fakes/discord.py), checked in the SQLite database itself."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest
import test_discord
from test_discord import answer, settings_for

from bench.fakes.discord import DIRECT_MESSAGE_REACTIONS, GUILD_MESSAGE_REACTIONS, FakeDiscord, custom_ids
from bots.delivery import ReplyButtons
from bots.discord_bot import run_discord
from bots.discord_bot.client import LorabotClient
from bots.discord_bot.feedback import reply_view
from bots.discord_bot.sink import NO_MENTIONS
from core.service import ChatService
from core.settings import load_core_settings
from support.ratings import rows, stored_ratings, until_ratings
from support.waiting import until

fake = test_discord.fake  # the fixtures: a fake Discord, and `start_bot(reply, ...)` -> client
start_bot = test_discord.start_bot

ALICE, BOB, CAROL = 11, 12, 13
THUMBS = "👍"
DOWN = "👎"


# -- helpers --------------------------------------------------------------------------------------
def rater(service, user_id: int) -> str:
    return service.pseudonym(f"discord:{user_id}")


def turn_of(message: dict) -> int:
    """The turn a reply's buttons carry (`lorabot:rate:up:<turn>`)."""
    return int(custom_ids(message)[0].rsplit(":", 1)[1])


def button(message: dict, action: str) -> str:
    """The custom id of the 'up', 'down' or 'again' button on `message`."""
    return next(cid for cid in custom_ids(message) if cid.split(":")[-2] == action)


async def ask(fake: FakeDiscord, client, text: str, *, user_id: int = ALICE, **where) -> list[dict]:
    """`user_id` asks (mentioning the bot); returns the reply's messages once it is complete."""
    message = await fake.user_message(text, user_id=user_id, mention_bot=True, **where)
    messages = await answer(fake, client, message)
    await fake.wait_until(lambda: custom_ids(fake.messages[int(messages[-1]["id"])]))
    return [fake.messages[int(m["id"])] for m in messages]


async def said(fake: FakeDiscord, token: str) -> dict:
    """The bot's (first) answer to one interaction: a response or a follow-up."""
    return (await fake.wait_until(lambda: fake.interaction_messages(token)))[0]


# -- buttons --------------------------------------------------------------------------------------
async def test_buttons_rate_change_and_a_second_press_counts_once(fake, start_bot):
    client = await start_bot("A fine answer.")
    service = client.service
    assert (
        fake.identify["intents"] & GUILD_MESSAGE_REACTIONS
        and fake.identify["intents"] & DIRECT_MESSAGE_REACTIONS
    )
    (reply,) = await ask(fake, client, "hi")
    turn = turn_of(reply)
    assert custom_ids(reply) == [
        f"lorabot:rate:up:{turn}",
        f"lorabot:rate:down:{turn}",
        f"lorabot:again:{turn}",
    ]
    assert [b["emoji"]["name"] for b in reply["components"][0]["components"]] == ["👍", "👎", "🔁"]
    assert len(fake.find("PATCH", rf"/messages/{reply['id']}$")) <= 1, "buttons ride with the final text"

    first = await fake.press(ALICE, reply["id"], button(reply, "up"))
    assert (await said(fake, first))["content"] == "Thanks — noted 👍"
    assert (await said(fake, first))["flags"] & 64, "only the presser sees the answer"
    again = await fake.press(ALICE, reply["id"], button(reply, "up"))  # a duplicate press
    await said(fake, again)
    await until_ratings(service, {(turn, 0, rater(service, ALICE), 1)})

    await said(fake, await fake.press(ALICE, reply["id"], button(reply, "down")))
    await until_ratings(service, {(turn, 0, rater(service, ALICE), -1)})
    assert fake.messages[int(reply["id"])]["content"] == "A fine answer."  # pressing edits nothing


# -- reactions ------------------------------------------------------------------------------------
async def test_reactions_rate_change_and_removing_one_deletes_only_that_rating(fake, start_bot):
    client = await start_bot("React to me.")
    service = client.service
    (reply,) = await ask(fake, client, "hi")
    turn, channel, me = turn_of(reply), fake.CHANNEL_ID, rater(service, ALICE)

    await fake.react(ALICE, channel, reply["id"], "👍🏽")  # a skin tone is still a 👍
    await until_ratings(service, {(turn, 0, me, 1)})
    await fake.react(ALICE, channel, reply["id"], DOWN)  # both on the message: the newest counts
    await until_ratings(service, {(turn, 0, me, -1)})
    await fake.unreact(ALICE, channel, reply["id"], "👍🏽")  # taking the 👍 back keeps the 👎
    await fake.react(BOB, channel, reply["id"], THUMBS)  # (a later event to know the removal was seen)
    await until_ratings(service, {(turn, 0, me, -1), (turn, 0, rater(service, BOB), 1)})
    await fake.unreact(ALICE, channel, reply["id"], DOWN)
    await until_ratings(service, {(turn, 0, rater(service, BOB), 1)})


async def test_a_reaction_on_any_message_of_a_long_reply_rates_its_turn(fake, start_bot):
    text = "\n\n".join(f"Paragraph {i}: " + "word " * 60 for i in range(12))  # about 4 kB: 3 messages
    client = await start_bot(text)
    service = client.service
    messages = await ask(fake, client, "write a lot")
    assert len(messages) >= 2
    assert [bool(custom_ids(m)) for m in messages] == [False] * (len(messages) - 1) + [True]
    turn = turn_of(messages[-1])
    await fake.react(BOB, fake.CHANNEL_ID, messages[0]["id"], THUMBS)  # the first, without buttons
    await until_ratings(service, {(turn, 0, rater(service, BOB), 1)})


async def test_a_dm_reply_is_rated_by_reaction_and_button(fake, start_bot):
    client = await start_bot("Private answer.")
    service = client.service
    question = await fake.user_message("hi", guild=False, user_id=ALICE)
    (reply,) = await answer(fake, client, question)
    reply = await fake.wait_until(
        lambda: custom_ids(fake.messages[int(reply["id"])]) and fake.messages[int(reply["id"])]
    )
    turn = turn_of(reply)
    await fake.react(ALICE, fake.dm_channel_id(ALICE), reply["id"], DOWN)
    await until_ratings(service, {(turn, 0, rater(service, ALICE), -1)})
    await said(fake, await fake.press(ALICE, reply["id"], button(reply, "up")))
    await until_ratings(service, {(turn, 0, rater(service, ALICE), 1)})


# -- 🔁 regenerate ---------------------------------------------------------------------------------
def answers(*texts: str):
    """A scripted model that answers `texts` in turn (then repeats the last one)."""
    queue = itertools.chain(texts, itertools.repeat(texts[-1]))
    return lambda request: next(queue)


async def regenerated(fake: FakeDiscord, client, message: dict, text: str, user: int = ALICE) -> dict:
    """`user` presses 🔁 on `message`; returns it once it shows `text` with its buttons back."""
    token = await fake.press(user, message["id"], button(message, "again"))
    assert (await fake.wait_until(lambda: [c for c in fake.callbacks if c["_token"] == token]))[0][
        "type"
    ] == 6

    def shows_it():
        now = fake.messages.get(int(message["id"]))
        return now if now is not None and now["content"] == text and custom_ids(now) else None

    shown = await fake.wait_until(shows_it)
    await client.wait_idle()
    return shown


async def test_regenerate_replaces_the_answer_in_place_and_keeps_the_old_one(fake, start_bot):
    client = await start_bot(answers("First answer.", "Second answer."), token_delay_s=0.01)
    service = client.service
    (reply,) = await ask(fake, client, "tell me")
    turn = turn_of(reply)
    await said(fake, await fake.press(BOB, reply["id"], button(reply, "up")))  # of the first answer
    await until_ratings(service, {(turn, 0, rater(service, BOB), 1)})
    posted = len(fake.find("POST", r"/channels/\d+/messages$"))

    shown = await regenerated(fake, client, reply, "Second answer.")
    assert turn_of(shown) == turn
    assert len(fake.find("POST", r"/channels/\d+/messages$")) == posted, "edited in place, nothing new"
    assert fake.interaction_messages(fake.callbacks[-1]["_token"]) == [], "nothing said to the presser"
    assert rows(service, "SELECT answer, version FROM turns WHERE id = ?", turn) == [("Second answer.", 1)]
    assert rows(service, "SELECT version, answer FROM answer_versions WHERE turn_id = ?", turn) == [
        (0, "First answer.")
    ]
    await said(fake, await fake.press(ALICE, reply["id"], button(shown, "down")))  # the answer that stayed
    await fake.react(CAROL, fake.CHANNEL_ID, reply["id"], THUMBS)
    await until_ratings(
        service,
        {
            (turn, 0, rater(service, BOB), 1),
            (turn, 1, rater(service, ALICE), -1),
            (turn, 1, rater(service, CAROL), 1),
        },
    )


async def test_regenerating_a_long_answer_into_a_short_one_removes_the_extra_messages(fake, start_bot):
    long = "\n\n".join(f"Part {i}: " + "word " * 60 for i in range(8))  # 2 messages or more
    client = await start_bot(answers(long, "Short now."))
    service = client.service
    messages = await ask(fake, client, "tell me")
    assert len(messages) >= 2
    turn = turn_of(messages[-1])
    token = await fake.press(ALICE, messages[-1]["id"], button(messages[-1], "again"))
    first = await fake.wait_until(
        lambda: custom_ids(fake.messages[int(messages[0]["id"])]) and fake.messages[int(messages[0]["id"])]
    )
    await client.wait_idle()
    assert first["content"] == "Short now." and turn_of(first) == turn
    assert all(int(m["id"]) in fake.deleted for m in messages[1:]), "the old continuation is gone"
    assert fake.interaction_messages(token) == []
    assert rows(service, "SELECT answer FROM turns WHERE id = ?", turn) == [("Short now.",)]
    await fake.react(BOB, fake.CHANNEL_ID, first["id"], THUMBS)
    await until_ratings(service, {(turn, 1, rater(service, BOB), 1)})


async def test_regenerate_of_an_older_answer_is_refused_and_changes_nothing(fake, start_bot):
    client = await start_bot(answers("One.", "Two.", "Three."))
    (old,) = await ask(fake, client, "first question")
    await ask(fake, client, "second question")  # the same conversation: `old` is no longer the latest
    token = await fake.press(ALICE, old["id"], button(old, "again"))
    refusal = await said(fake, token)
    assert refusal["flags"] & 64 and "latest" in refusal["content"]
    now = fake.messages[int(old["id"])]
    assert now["content"] == "One." and custom_ids(now) == custom_ids(old)
    assert rows(client.service, "SELECT answer, version FROM turns WHERE id = ?", turn_of(old)) == [
        ("One.", 0)
    ]


async def test_a_chat_command_answer_has_buttons_and_regenerates_in_place(fake, start_bot):
    client = await start_bot(answers("Slash one.", "Slash two."))
    token = await fake.slash("chat", {"prompt": "hi"})
    reply = await fake.wait_until(lambda: [m for m in fake.interaction_messages(token) if custom_ids(m)])
    await client.wait_idle()
    shown = await regenerated(fake, client, reply[0], "Slash two.", user=FakeDiscord.OWNER_ID)
    assert fake.interaction_messages(token) == [shown]


# -- groups, restarts -----------------------------------------------------------------------------
async def test_in_a_thread_each_member_counts_once(fake, start_bot):
    client = await start_bot("Thread answer.")
    service = client.service
    thread = fake.BOT_THREAD_ID
    (reply,) = await ask(fake, client, "what do you all think?", channel_id=thread)
    turn = turn_of(reply)
    for _ in range(2):  # Alice presses 👍 twice and also reacts 👍: still one rating
        await said(fake, await fake.press(ALICE, reply["id"], button(reply, "up")))
    await fake.react(ALICE, thread, reply["id"], THUMBS)
    await fake.react(BOB, thread, reply["id"], DOWN)
    await said(fake, await fake.press(CAROL, reply["id"], button(reply, "up")))
    await until_ratings(
        service,
        {
            (turn, 0, rater(service, ALICE), 1),
            (turn, 0, rater(service, BOB), -1),
            (turn, 0, rater(service, CAROL), 1),
        },
    )


async def test_a_reply_from_before_a_restart_can_be_rated(fake, start_bot):
    first = await start_bot("Before the restart.")
    (reply,) = await ask(fake, first, "hi")
    turn = turn_of(reply)
    start_bot.tasks[first].cancel()  # the process ends: its client and service are gone
    await asyncio.gather(start_bot.tasks[first], return_exceptions=True)
    await first.service.close()

    second = await start_bot("After the restart.")  # a new client and service on the same database
    service = second.service
    token = await fake.press(ALICE, reply["id"], button(reply, "up"))
    assert (await said(fake, token))["content"] == "Thanks — noted 👍"
    await fake.react(BOB, fake.CHANNEL_ID, reply["id"], DOWN)
    await until_ratings(service, {(turn, 0, rater(service, ALICE), 1), (turn, 0, rater(service, BOB), -1)})


# -- bad input ------------------------------------------------------------------------------------
async def test_reactions_that_are_no_rating_are_ignored(fake, start_bot, caplog):
    """The bot's own reactions, other bots', other emoji, reactions on people's messages, and
    people the access lists refuse: none is a rating (and none reaches the store)."""
    caplog.set_level(logging.INFO, logger="core")
    client = await start_bot("Rate me.", allowed_role_ids=str(FakeDiscord.MEMBER_ROLE_ID))
    service = client.service
    member = [FakeDiscord.MEMBER_ROLE_ID]
    question = await fake.user_message("hi", user_id=ALICE, mention_bot=True, roles=member)
    (reply,) = await answer(fake, client, question)
    channel, turn = fake.CHANNEL_ID, None
    own = client.get_partial_messageable(channel).get_partial_message(int(reply["id"]))
    await own.add_reaction(THUMBS)  # the bot's own reaction, echoed by Discord
    await fake.wait_until(lambda: fake.BOT_ID in fake.reacted(reply["id"]))
    fake.add_user(99, "otherbot")["bot"] = True
    await fake.react(99, channel, reply["id"], THUMBS, roles=member)  # another bot
    await fake.react(BOB, channel, reply["id"], "🎉", roles=member)  # not a rating
    await fake.react(BOB, channel, question["id"], THUMBS, roles=member)  # on Alice's message
    await fake.react(CAROL, channel, reply["id"], THUMBS)  # Carol lacks the allowed role
    await fake.react(BOB, channel, reply["id"], DOWN, roles=member)  # the one that counts
    turn = rows(service, "SELECT id FROM turns")[0][0]
    await until_ratings(service, {(turn, 0, rater(service, BOB), -1)})
    assert question["id"] not in caplog.text, "a reaction on a person's message never reaches the core"


async def test_a_flood_of_reaction_toggles_stores_the_last_state(fake, start_bot):
    client = await start_bot("Flip me.")
    service = client.service
    (reply,) = await ask(fake, client, "hi")
    turn, channel = turn_of(reply), fake.CHANNEL_ID
    calls = len(fake.calls)
    for toggle in range(50):  # 👍, 👎, 👍, … as fast as the gateway delivers them
        now, before = (THUMBS, DOWN) if toggle % 2 == 0 else (DOWN, THUMBS)
        await fake.unreact(ALICE, channel, reply["id"], before)
        await fake.react(ALICE, channel, reply["id"], now)
    await fake.react(BOB, channel, reply["id"], THUMBS)
    await fake.unreact(BOB, channel, reply["id"], THUMBS)  # Bob's ends with nothing
    await until_ratings(service, {(turn, 0, rater(service, ALICE), -1)})  # the 50th toggle was 👎
    assert len(fake.calls) == calls, "ratings cost no Discord request"


async def test_ratings_of_an_unknown_or_deleted_turn_are_ignored_and_logged(fake, start_bot, caplog):
    caplog.set_level(logging.INFO, logger="core")
    client = await start_bot("Forget me.")
    service = client.service
    # an answer whose turn this database never had (e.g. from a database since replaced)
    stray = await client.get_partial_messageable(fake.CHANNEL_ID).send(
        "An old answer.", view=reply_view(ReplyButtons(999_999, True, True)), allowed_mentions=NO_MENTIONS
    )
    await said(fake, await fake.press(BOB, stray.id, "lorabot:rate:up:999999"))
    await fake.react(BOB, fake.CHANNEL_ID, stray.id, DOWN)
    again = await said(fake, await fake.press(BOB, stray.id, "lorabot:again:999999"))
    assert "no longer stored" in again["content"] and again["flags"] & 64

    (reply,) = await ask(fake, client, "hi")  # Alice's question, then she has it deleted
    turn = turn_of(reply)
    await said(fake, await fake.press(BOB, reply["id"], button(reply, "up")))
    await until_ratings(service, {(turn, 0, rater(service, BOB), 1)})
    done = await said(fake, await fake.slash("forget", {"confirm": "yes"}, user_id=ALICE))
    assert "Deleted 1 question" in done["content"], done["content"]
    await said(fake, await fake.press(CAROL, reply["id"], button(reply, "up")))
    await fake.react(CAROL, fake.CHANNEL_ID, reply["id"], DOWN)

    def logged(line: str):
        return lambda: line in caplog.text

    await until(logged("rating ignored: turn 999999 is not stored"), timeout=10)
    await until(logged(f"message {fake.CHANNEL_ID}:{stray.id} on discord is not a stored reply"), timeout=10)
    await until(logged(f"rating ignored: turn {turn} is not stored"), timeout=10)  # Carol's press
    await until(
        logged(f"message {fake.CHANNEL_ID}:{reply['id']} on discord is not a stored reply"), timeout=10
    )
    assert await stored_ratings(service) == set()
    assert fake.messages[int(reply["id"])]["content"] == "Forget me."  # the bot's message stays


async def test_an_opted_out_person_is_told_and_nothing_of_theirs_is_stored(fake, start_bot):
    client = await start_bot("Answer.")
    service = client.service
    (reply,) = await ask(fake, client, "hi")
    turn = turn_of(reply)
    off = await said(fake, await fake.slash("feedback", {"choice": "off"}, user_id=BOB))
    assert "not kept" in off["content"]
    told = await said(fake, await fake.press(BOB, reply["id"], button(reply, "up")))
    assert "You turned feedback off" in told["content"]
    await fake.react(BOB, fake.CHANNEL_ID, reply["id"], DOWN)
    await fake.react(ALICE, fake.CHANNEL_ID, reply["id"], THUMBS)
    await until_ratings(service, {(turn, 0, rater(service, ALICE), 1)})


async def test_a_refused_person_cannot_press_the_buttons(fake, start_bot):
    client = await start_bot(answers("Kept.", "Not this."), denied_user_ids=str(CAROL))
    (reply,) = await ask(fake, client, "hi")
    for action in ("up", "again"):
        told = await said(fake, await fake.press(CAROL, reply["id"], button(reply, action)))
        assert told["content"] == "Sorry, you can't use lorabot here." and told["flags"] & 64
    assert await stored_ratings(client.service) == set()
    assert fake.messages[int(reply["id"])]["content"] == "Kept."


# -- settings ---------------------------------------------------------------------------------------
async def test_with_feedback_off_only_regenerate_is_offered_and_nothing_is_rated(fake, start_bot):
    client = await start_bot("No ratings.", core={"feedback": False})
    (reply,) = await ask(fake, client, "hi")
    assert custom_ids(reply) == [f"lorabot:again:{turn_of(reply)}"]
    await fake.react(ALICE, fake.CHANNEL_ID, reply["id"], THUMBS)
    # a 👍 button from when ratings were on
    older = await client.get_partial_messageable(fake.CHANNEL_ID).send(
        "From before.",
        view=reply_view(ReplyButtons(turn_of(reply), True, True)),
        allowed_mentions=NO_MENTIONS,
    )
    told = await said(fake, await fake.press(ALICE, older.id, f"lorabot:rate:up:{turn_of(reply)}"))
    assert told["content"] == "Ratings are turned off for this bot."
    assert rows(client.service, "SELECT COUNT(*) FROM ratings") == [(0,)]


async def test_with_buttons_off_replies_have_none_and_reactions_still_rate(fake, start_bot):
    client = await start_bot("Plain.", core={"feedback_buttons": False})
    service = client.service
    message = await fake.user_message("hi", user_id=ALICE, mention_bot=True)
    (reply,) = await answer(fake, client, message)
    assert reply["components"] == []
    assert not any("components" in (c.json or {}) for c in fake.find("PATCH", rf"/messages/{reply['id']}$"))
    await fake.react(ALICE, fake.CHANNEL_ID, reply["id"], THUMBS)
    turn = rows(service, "SELECT id FROM turns")[0][0]
    await until_ratings(service, {(turn, 0, rater(service, ALICE), 1)})


# -- /forget and /feedback buttons ------------------------------------------------------------------
async def test_forget_asks_first_and_its_button_deletes_only_the_presser(fake, start_bot):
    client = await start_bot("Answer.")
    service = client.service
    await ask(fake, client, "mine", user_id=ALICE)
    (theirs,) = await ask(fake, client, "theirs", user_id=BOB)
    await fake.react(ALICE, fake.CHANNEL_ID, theirs["id"], THUMBS)
    await until_ratings(service, {(turn_of(theirs), 0, rater(service, ALICE), 1)})

    question = await said(fake, await fake.slash("forget", {}, user_id=ALICE))
    assert "Delete it?" in question["content"] and question["flags"] & 64
    assert custom_ids(question) == ["lorabot:cmd:forget:yes"]
    assert rows(service, "SELECT COUNT(*) FROM turns") == [(2,)], "asking deletes nothing"
    token = await fake.press(ALICE, question["id"], "lorabot:cmd:forget:yes")
    assert (await fake.wait_until(lambda: [c for c in fake.callbacks if c["_token"] == token]))[0][
        "type"
    ] == 7
    done = await fake.wait_until(
        lambda: (
            "Deleted" in fake.messages[int(question["id"])]["content"] and fake.messages[int(question["id"])]
        )
    )
    assert "1 question" in done["content"] and "1 rating" in done["content"] and done["components"] == []
    assert rows(service, "SELECT id FROM turns") == [(turn_of(theirs),)]  # Bob's question stays
    assert await stored_ratings(service) == set()


async def test_feedback_buttons_toggle_the_presser_own_choice(fake, start_bot):
    client = await start_bot("Answer.")
    service = client.service
    shown = await said(fake, await fake.slash("feedback", {}, user_id=BOB))
    assert custom_ids(shown) == ["lorabot:cmd:feedback:on", "lorabot:cmd:feedback:off"]
    assert [b["style"] for b in shown["components"][0]["components"]] == [1, 2]  # on is highlighted
    await fake.press(BOB, shown["id"], "lorabot:cmd:feedback:off")
    await fake.wait_until(lambda: "not kept" in fake.messages[int(shown["id"])]["content"])
    assert not service.feedback_on_for(f"discord:{BOB}") and service.feedback_on_for(f"discord:{ALICE}")


# -- the real model -----------------------------------------------------------------------------------
@pytest.mark.slow
async def test_real_model_regenerates_a_different_answer_that_the_conversation_keeps(fake, tmp_path):
    """llama.cpp end to end: even at temperature 0 🔁 writes another answer (a fresh seed, and the
    old answer's first token is banned), in the same message, and the history continues from it."""
    settings = load_core_settings(data_dir=tmp_path / "data", max_new_tokens=24, temperature=0)
    service = ChatService(settings)
    await service.start()
    client = LorabotClient(service, settings_for(fake), guild_ready_timeout=0.05)
    task = asyncio.create_task(run_discord(service, settings_for(fake), client=client))
    try:
        await asyncio.wait_for(client.wait_until_ready(), 10)
        (reply,) = await ask(fake, client, "Name one colour.")
        turn, old = turn_of(reply), reply["content"]
        token = await fake.press(ALICE, reply["id"], button(reply, "again"))

        def replaced():
            now = fake.messages[int(reply["id"])]
            return now if now["content"] != old and custom_ids(now) else None

        new = (await fake.wait_until(replaced, timeout=60))["content"]
        await client.wait_idle(60)
        assert fake.interaction_messages(token) == []
        conversation = f"discord:channel:{fake.CHANNEL_ID}:user:{ALICE}"
        history = await service.history.recent(conversation, 10)
        assert [m["content"].strip() for m in history][-1] == new.strip()
        assert rows(service, "SELECT answer FROM answer_versions WHERE turn_id = ?", turn) == [(old,)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await service.close(drain_timeout_s=1)
