"""`lorabot feedback export` and `report` over the real core (scripted engine): chats are asked,
rated and regenerated through ChatService, then exported through the CLI. The files load with
`datasets` and go through trl's own trainers' dataset preparation; nothing that names a person
leaves; opted-out conversations stay out; conflicts and filters are counted as the summary says."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from typer.testing import CliRunner

from core import schema
from core.commands import Where, run_command
from core.engines.base import GenerationRequest
from core.events import Accepted, Done
from core.feedback_export import history_window, scrub
from core.feedback_report import wilson_interval
from core.service import ChatService
from lorabot.cli import app
from support.engines import make_service

ALICE, BOB, CAROL, DAVE = "discord:1001", "discord:1002", "telegram:2003", "telegram:2004"
SYSTEM = "You are a test bot."
EXPORTS = itertools.count()  # output file names
GROUP = "discord:777:888"  # conversation ids carry platform ids: they must never be exported


def counter_replies() -> Callable[[GenerationRequest], str]:
    """'answer N to @⁠Alice': numbered, with a defused mention the export must scrub."""
    numbers = itertools.count(1)
    return lambda request: f"answer {next(numbers)} to @\u2060Alice"


def answer(number: int) -> str:
    return f"answer {number} to @user"


def service_for(tmp_path: Path, url: str | None = None, **overrides: object) -> ChatService:
    """A service over the scripted engine (numbered answers) on `url` (default: SQLite in tmp_path)."""
    url = url or f"sqlite:///{tmp_path / 'data' / 'history.sqlite3'}"
    return make_service(
        tmp_path,
        reply=counter_replies(),
        system_prompt=SYSTEM,
        rate_limit_messages=100,
        database_url=url,
        **overrides,
    )


async def ask(service: ChatService, conversation: str, user: str, text: str) -> int:
    events = [event async for event in service.reply(conversation, user, text)]
    return next(event.turn_id for event in events if isinstance(event, Accepted))


async def regenerate(service: ChatService, turn: int, user: str) -> Done:
    events = [event async for event in service.regenerate(turn, user)]
    return next(event for event in events if isinstance(event, Done))


async def rate(service: ChatService, turn: int, **values: int) -> None:
    """Ratings by name (alice=1, bob=-1), stored before returning: a 🔁 right after must not
    take a rating meant for the answer before it."""
    people = {"alice": ALICE, "bob": BOB, "carol": CAROL, "dave": DAVE}
    for name, value in values.items():
        await service.rate(turn, people[name], value)
    assert await service.feedback_flushed()


async def export(service: ChatService, tmp_path: Path, fmt: str, *options: str) -> tuple[list[dict], str]:
    """Run `lorabot feedback export` on the service's database; the rows and the printed summary."""
    out = tmp_path / f"{fmt}-{next(EXPORTS)}.jsonl"
    printed = await cli(service, tmp_path, "export", "--format", fmt, "--out", str(out), *options)
    return await asyncio.to_thread(read_jsonl, out), printed


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def cli(service: ChatService, tmp_path: Path, *args: str) -> str:
    """`lorabot feedback ARGS` in a thread (the CLI runs an event loop of its own); its output."""
    env = {
        "LORABOT_DATA_DIR": str(tmp_path / "data"),
        "LORABOT_DATABASE_URL": service.settings.resolved_database_url,
        "LORABOT_SYSTEM_PROMPT": SYSTEM,
        "COLUMNS": "250",
    }
    result = await asyncio.to_thread(CliRunner().invoke, app, ["feedback", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def texts(messages: list[dict]) -> list[str]:
    return [message["content"] for message in messages]


async def rated_chats(service: ChatService) -> dict[str, int]:
    """Every case the formats treat differently; the scripted answers are numbered in order."""
    turns: dict[str, int] = {}
    turns["liked"] = await ask(  # answer 1: 👍 👍
        service, GROUP, ALICE, "hi <@111222333444555666> and <@!42>, ask <@&4242> and @Alice in <#99887766>"
    )
    await rate(service, turns["liked"], alice=1, bob=1)
    turns["redone"] = await ask(service, GROUP, ALICE, "@everyone what about @\u2060bob_the_builder?")
    await rate(service, turns["redone"], alice=-1)  # answer 2: 👎, then replaced by answer 3: 👍
    await regenerate(service, turns["redone"], ALICE)
    await rate(service, turns["redone"], alice=1)
    turns["tie"] = await ask(service, "telegram:5", CAROL, "a tie")  # answer 4: 👍 👎
    await rate(service, turns["tie"], alice=1, bob=-1)
    turns["majority"] = await ask(service, "telegram:5", CAROL, "a majority")  # answer 5: 👍 👍 👎
    await rate(service, turns["majority"], alice=1, bob=1, carol=-1)
    turns["liked_replaced"] = await ask(service, "telegram:7", CAROL, "liked then replaced")  # 6: 👍
    await rate(service, turns["liked_replaced"], alice=1)
    await regenerate(service, turns["liked_replaced"], CAROL)  # answer 7: not rated
    turns["both_bad"] = await ask(service, "telegram:8", CAROL, "both bad")  # answer 8: not rated
    await regenerate(service, turns["both_bad"], CAROL)  # answer 9: 👎
    await rate(service, turns["both_bad"], alice=-1)
    turns["old_better"] = await ask(service, "telegram:9", CAROL, "the old one was better")  # 10: 👍
    await rate(service, turns["old_better"], alice=1)
    await regenerate(service, turns["old_better"], CAROL)  # answer 11: 👎
    await rate(service, turns["old_better"], bob=-1)
    # a group where Dave asked once: after his /feedback off, all of it stays out (Carol's turn too)
    turns["before_dave"] = await ask(service, "telegram:6", CAROL, "carol before dave")  # 12: 👍
    await rate(service, turns["before_dave"], alice=1)
    turns["dave"] = await ask(service, "telegram:6", DAVE, "dave's secret")  # answer 13: 👍
    await rate(service, turns["dave"], bob=1)
    await service.set_feedback(DAVE, False)
    return turns


async def test_kto_rows_carry_each_answers_own_ratings_and_the_summary_counts(tmp_path):
    async with service_for(tmp_path) as service:
        await rated_chats(service)
        rows, summary = await export(service, tmp_path, "kto")
    by_answer = {row["completion"][0]["content"]: row for row in rows}
    assert {text: row["label"] for text, row in by_answer.items()} == {
        answer(1): True,
        answer(2): False,  # the replaced answer keeps its 👎 ...
        answer(3): True,  # ... and the one that replaced it has its own 👍
        answer(5): True,  # 2 👍 against 1 👎: majority
        answer(6): True,
        answer(9): False,
        answer(10): True,
        answer(11): False,
    }  # answer 4 (a tie) is dropped; 12 and 13 are in a conversation Dave asked in
    question = "@user what about @user?"
    assert texts(by_answer[answer(2)]["prompt"]) == [
        SYSTEM,
        "hi @user and @user, ask @user and @user in #channel",
        answer(1),
        question,
    ]
    assert by_answer[answer(3)]["prompt"] == by_answer[answer(2)]["prompt"]
    assert [m["role"] for m in by_answer[answer(2)]["prompt"]] == ["system", "user", "assistant", "user"]
    assert by_answer[answer(5)]["prompt"][1:] == [
        {"role": "user", "content": "a tie"},
        {"role": "assistant", "content": answer(4)},
        {"role": "user", "content": "a majority"},
    ]
    assert "8 → " in summary and "5 true (👍), 3 false (👎)" in summary
    assert "2: 1 by majority, 1 ties dropped" in summary and "majority wins; ties dropped" in summary
    assert _count(summary, "conversations left out (opted out)") == 1


async def test_dpo_pairs_prefer_what_stayed_or_was_liked_and_drop_conflicts(tmp_path):
    async with service_for(tmp_path) as service:
        await rated_chats(service)
        rows, summary = await export(service, tmp_path, "dpo")
    pairs = {(row["chosen"][0]["content"], row["rejected"][0]["content"]) for row in rows}
    assert pairs == {
        (answer(3), answer(2)),  # the one that stayed (and 👍) over the replaced 👎
        (answer(10), answer(11)),  # the one that stayed is 👎: the replaced 👍 one is chosen
    }
    for row in rows:
        assert row["prompt"][-1]["role"] == "user" and len(row["chosen"]) == len(row["rejected"]) == 1
    assert "1 where a replaced answer is 👍, 1 where the answer that stayed is 👎 and none is 👍" in summary


async def test_sft_keeps_liked_answers_that_stayed_with_their_conversation(tmp_path):
    async with service_for(tmp_path) as service:
        await rated_chats(service)
        rows, _ = await export(service, tmp_path, "sft")
    assert [texts(row["messages"])[-1] for row in rows] == [answer(1), answer(3), answer(5)]
    assert texts(rows[1]["messages"]) == [
        SYSTEM,
        "hi @user and @user, ask @user and @user in #channel",
        answer(1),
        "@user what about @user?",
        answer(3),
    ]
    assert all(row["messages"][-1]["role"] == "assistant" for row in rows)


async def test_exports_name_nobody_and_leave_opted_out_conversations_out(tmp_path, store_url):
    async with service_for(tmp_path, store_url) as service:
        await rated_chats(service)
        files = [await export(service, tmp_path, fmt) for fmt in ("kto", "dpo", "sft")]
        secrets = {ALICE, BOB, CAROL, DAVE, GROUP, "telegram:5", *map(service.pseudonym, (ALICE, DAVE))}
    assert [len(rows) for rows, _ in files] == [8, 2, 3]
    for rows, summary in files:
        text = json.dumps(rows, ensure_ascii=False)
        assert "dave" not in text and answer(12) not in text and answer(13) not in text
        for secret in [*secrets, "1001", "111222333444555666", "4242", "99887766", "Alice", "bob_the"]:
            assert secret not in text
        assert "\u2060" not in text and "\u200b" not in text and "@everyone" not in text
        assert _count(summary, "conversations left out (opted out)") == 1


def test_scrub_replaces_every_kind_of_mention_and_keeps_emails():
    assert scrub("<@1> <@!2> <@&3> <#4> @here @everyone @Zoë_9 @\u2060bot.name, mail a@b.org") == (
        "@user @user @user #channel @user @user @user @user, mail a@b.org"
    )
    assert scrub("tg://user?id=12345 said\u200b hi") == "@user said hi"
    code = "@Bob: use\n```python\n@property\ndef name(self):  # ask @Bob\n    @app.get('/')\n```\n@Bob"
    assert scrub(code) == code.replace("@Bob", "@user")  # decorators in code fences stay
    assert [history_window(count, 20) for count in (0, 20, 21, 30, 31)] == [0, 20, 11, 20, 11]


async def test_model_and_since_filters(tmp_path):
    async with service_for(tmp_path, models={"tuned": "tuned answer"}) as service:
        base = await ask(service, "c1", ALICE, "base model")
        await rate(service, base, alice=1)
        await service.set_model("c2", "tuned")
        tuned = await ask(service, "c2", BOB, "tuned model")
        await rate(service, tuned, bob=-1)
        mixed = await ask(service, "c3", CAROL, "then switched")  # the default model's answer ...
        await service.set_model("c3", "tuned")
        await regenerate(service, mixed, CAROL)  # ... replaced by the tuned model's
        old = await ask(service, "c4", DAVE, "long ago")
        await rate(service, old, alice=-1)
        await regenerate(service, old, DAVE)

        await service.history.write(lambda db: backdate(db, old), "test")
        tuned_only, summary = await export(service, tmp_path, "kto", "--model", "tuned")
        assert [(row["completion"][0]["content"], row["label"]) for row in tuned_only] == [
            ("tuned answer", False)
        ]
        assert _count(summary, "skipped: another model") == 2
        pairs, summary = await export(service, tmp_path, "dpo", "--model", "tuned")
        assert pairs == [] and _count(summary, "skipped: another model") == 2  # c3 mixes two models
        pairs, _ = await export(service, tmp_path, "dpo")
        assert [row["chosen"][0]["content"] for row in pairs] == ["tuned answer", answer(4)]
        recent, summary = await export(service, tmp_path, "kto", "--since", "2024-01-01")
        assert [row["prompt"][-1]["content"] for row in recent] == ["base model", "tuned model"]
        assert _count(summary, "skipped: before --since") == 1
        pairs, summary = await export(service, tmp_path, "dpo", "--since", "2024-01-01T00:00+00:00")
        assert [row["prompt"][-1]["content"] for row in pairs] == ["then switched"]
        assert _count(summary, "skipped: before --since") == 1


async def backdate(db: AsyncConnection, turn: int) -> None:
    """Make turn `turn`'s ratings and regenerates look as if made on 2020-01-01."""
    stamp = 1577836800.0
    ratings, versions = schema.ratings, schema.answer_versions
    await db.execute(sa.update(ratings).where(ratings.c.turn_id == turn).values(updated_at=stamp))
    await db.execute(sa.update(versions).where(versions.c.turn_id == turn).values(replaced_at=stamp))


def _count(summary: str, label: str) -> int:
    """The number in the summary table's row `label`."""
    line = next(line for line in summary.splitlines() if label in line)
    return int(line.split("│")[-2].strip())


async def test_report_figures_and_stats_on_both_backends(tmp_path, store_url):
    async with service_for(tmp_path, store_url, models={"tuned": "tuned answer"}) as service:
        first = await ask(service, "c1", ALICE, "one")
        await rate(service, first, alice=1, bob=1)
        second = await ask(service, "c1", ALICE, "two")
        await rate(service, second, alice=-1)
        third = await ask(service, "c1", ALICE, "three")
        await rate(service, third, alice=1)
        await regenerate(service, third, ALICE)
        await rate(service, third, bob=1)  # 4 👍, 1 👎 over 4 answers; 1 of 3 turns regenerated
        await service.set_model("c2", "tuned")
        await ask(service, "c2", BOB, "tuned, unrated")
        printed = json.loads(await cli(service, tmp_path, "report", "--json"))
        stats = await run_command(service, Where("c1", ALICE), "stats")
    base, tuned = printed
    assert base["model"] == "smollm2-135m" and base["model_file"].startswith("gguf:")
    assert (base["answers_rated"], base["up"], base["down"], base["ratings"]) == (4, 4, 1, 5)
    # Wilson 95% for 4 of 5, by hand: centre (0.8 + z²/10) / (1 + z²/5) = 0.6697,
    # half-width z·√(0.8·0.2/5 + z²/100) / (1 + z²/5) = 0.2941, z = 1.96
    assert base["up_rate"] == 0.8
    assert base["up_rate_low"] == pytest.approx(0.3755, abs=1e-4)
    assert base["up_rate_high"] == pytest.approx(0.9638, abs=1e-4)
    assert (base["answered_turns"], base["regenerated_turns"]) == (3, 1)
    assert base["regenerate_rate"] == pytest.approx(1 / 3)
    assert (tuned["model"], tuned["ratings"], tuned["up_rate"]) == ("tuned", 0, None)
    assert (tuned["answered_turns"], tuned["regenerated_turns"]) == (1, 0)
    file = base["model_file"].split(":")[1][:4]
    assert f"👍 80% (38–96%, 5 ratings), 🔁 33% — smollm2-135m gguf:{file}…" in stats.text.splitlines()
    assert "👍 no ratings yet, 🔁 0% — tuned gguf:" in stats.text


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(10, 10)  # all 👍: the interval still admits a lower rate
    assert high == pytest.approx(1.0) and low == pytest.approx(0.7225, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)


@pytest.mark.slow
async def test_files_load_with_datasets_and_pass_trls_trainers(tmp_path, embedded_gguf):
    """The three files through `datasets` and the dataset preparation of trl's own KTO, DPO and SFT
    trainers (a tiny random Llama with the embedded model's tokenizer: nothing is downloaded)."""
    pytest.importorskip("trl")
    async with service_for(tmp_path) as service:
        await rated_chats(service)
        files = {fmt: tmp_path / f"{fmt}.jsonl" for fmt in ("kto", "dpo", "sft")}
        for fmt, path in files.items():
            await cli(service, tmp_path, "export", "--format", fmt, "--out", str(path))
    await asyncio.to_thread(_check_with_trl, files, embedded_gguf, tmp_path)


def _check_with_trl(files: dict[str, Path], gguf: Path, tmp_path: Path) -> None:
    from datasets import load_dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.pad_token = tokenizer.pad_token or "<|im_end|>"
    shape = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = LlamaConfig(**shape, num_key_value_heads=1, head_dim=8, vocab_size=len(tokenizer))
    model_dir = tmp_path / "tiny-llama"  # a path: the KTO/DPO trainers load their reference model from it
    LlamaForCausalLM(config).save_pretrained(model_dir)
    data = {
        fmt: load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
        for fmt, path in files.items()
    }
    assert [len(data[fmt]) for fmt in ("kto", "dpo", "sft")] == [8, 2, 3]
    for fmt, dataset in data.items():
        for example in dataset:
            assert is_conversational(example), fmt
            rendered = maybe_apply_chat_template(example, tokenizer)
            assert all(isinstance(value, str | bool) for value in rendered.values()), fmt
    common = dict(report_to=[], use_cpu=True, per_device_train_batch_size=2)
    trainers = {
        "kto": (KTOTrainer, KTOConfig, {"prompt_ids", "completion_ids", "KL_completion_ids", "label"}),
        "dpo": (DPOTrainer, DPOConfig, {"prompt_ids", "chosen_ids", "rejected_ids"}),
        "sft": (SFTTrainer, SFTConfig, {"input_ids"}),
    }
    for fmt, (trainer_class, config_class, columns) in trainers.items():
        args = config_class(output_dir=str(tmp_path / f"out-{fmt}"), **common)
        trainer = trainer_class(
            model=str(model_dir), args=args, train_dataset=data[fmt], processing_class=tokenizer
        )
        prepared = trainer.train_dataset
        assert len(prepared) == len(data[fmt]) and columns <= set(prepared.column_names), fmt
        assert all(len(ids) > 0 for ids in prepared[next(iter(columns - {"label"}))]), fmt
    assert sum(data["kto"]["label"]) == 5
