"""`lorabot models promote CANDIDATE --replace NAME`: the gate's margins, the atomic registry
promotion, and the real command on the embedded model against two copies of it made with the
`gguf` package — a twin (same weights, another file identity: one metadata string changed in
place) and a noisy one (the 4-bit values of every attention q/k tensor replaced by random bytes:
its held-out perplexity goes from ~20 to thousands). A bot process running on the fake Telegram
answers its next turn from the promoted file without a restart.

The evaluation is kept small (2 held-out conversations, one prompt, 8 new tokens: a few seconds a
model) and the speed margin is switched off (--max-slowdown 1) where a real run decides: decode
speed on a shared CPU is not what these tests are about; its margin is tested on reports.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from core.embedded import embedded_model_path
from core.fingerprint import file_identity
from core.registry import ModelRegistry, RegistryError
from training.evaluate.errors import EvalError
from training.evaluate.gate import Margins, decide

ROOT = Path(__file__).resolve().parents[1]
ALICE = 4242
SMALL_EVAL = ["--heldout-limit", "2", "--max-tokens", "8", "--max-slowdown", "1", "--no-progress"]


# -- the decision, on hand-written reports ---------------------------------------------------------
def model(name: str, perplexity: float | None, tok_s: float | None) -> dict:
    return {"name": name, "perplexity": perplexity, "decode_tok_s": {"median": tok_s}}


def report(base_ppl=10.0, cand_ppl=10.0, base_tok_s=50.0, cand_tok_s=50.0, win_rate=None) -> dict:
    judged = None
    if win_rate is not None:
        pair = {"model": "cand", "other": "served", "wins": 1, "losses": 2, "ties": 1, "n": 4}
        judged = {"judge": "j", "pairs": [{**pair, "win_rate": win_rate}]}
    return {
        "models": [model("served", base_ppl, base_tok_s), model("cand", cand_ppl, cand_tok_s)],
        "judge": judged,
    }


def test_gate_passes_an_equal_candidate_and_says_what_was_not_measured():
    decision = decide(report(), Margins())
    assert decision.passed and not decision.failed
    assert [c.passed for c in decision.checks] == [True, None, True]  # no judge ran: blocks nothing
    assert "no judge ran" in decision.checks[1].why


def test_gate_refuses_perplexity_beyond_the_margin_and_says_by_how_much():
    assert decide(report(cand_ppl=10.49), Margins()).passed  # +4.9% of an allowed +5%
    decision = decide(report(cand_ppl=12.0), Margins())
    assert not decision.passed and [c.figure for c in decision.failed] == ["held-out perplexity"]
    assert "12.000 vs 10.000" in decision.reason and "+20.0%" in decision.reason and "+5%" in decision.reason
    assert decide(report(cand_ppl=12.0), Margins(max_ppl_increase=0.25)).passed


def test_gate_refuses_broken_weights_whose_perplexity_is_not_finite():
    for broken in (math.inf, math.nan):
        decision = decide(report(cand_ppl=broken), Margins())
        assert not decision.passed and "not finite" in decision.reason


def test_gate_refuses_a_judge_win_rate_below_the_minimum():
    assert decide(report(win_rate=0.5), Margins()).passed
    decision = decide(report(win_rate=0.25), Margins())
    assert [c.figure for c in decision.failed] == ["judge win rate"]
    assert "25%" in decision.reason and "below the required 40%" in decision.reason
    assert decide(report(win_rate=0.25), Margins(min_judge_win=0.2)).passed


def test_gate_refuses_a_slowdown_beyond_the_margin_unless_switched_off():
    assert decide(report(cand_tok_s=41.0), Margins()).passed  # -18% of an allowed -20%
    decision = decide(report(cand_tok_s=30.0), Margins())
    assert [c.figure for c in decision.failed] == ["decode tokens/s"]
    assert "30.0 tok/s vs 50.0" in decision.reason and "-40%" in decision.reason
    assert decide(report(cand_tok_s=1.0), Margins(max_slowdown=1)).passed


def test_gate_leaves_a_remote_models_perplexity_unmeasured_and_names_every_failure():
    assert [c.passed for c in decide(report(cand_ppl=None), Margins()).checks] == [None, None, True]
    decision = decide(report(cand_ppl=20.0, cand_tok_s=10.0, win_rate=0.0), Margins())
    assert [c.figure for c in decision.failed] == ["held-out perplexity", "judge win rate", "decode tokens/s"]


@pytest.mark.parametrize(
    "margins", [{"max_ppl_increase": -0.1}, {"min_judge_win": 1.5}, {"max_slowdown": -1}, {"max_slowdown": 2}]
)
def test_gate_margins_out_of_range_are_refused(margins):
    with pytest.raises(EvalError, match="must be"):
        Margins(**margins)


# -- the registry's promotion ----------------------------------------------------------------------
HAND_WRITTEN = """\
# Our models. Ask Ana before changing them.
owner = "ops"                 # a key lorabot does not know

[models.served]               # what the bots serve
path = "served.gguf"
temperature = 0.6             # NAME's generation defaults stay NAME's
rollout = "canary"            # a key of a newer lorabot: kept

[models.cand]
path = "cand.gguf"
context_length = 1024
description = "KTO tune"

[deploy]
region = "eu-west"
"""


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    for name in ("served.gguf", "cand.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    models = tmp_path / "models.toml"
    models.write_text(HAND_WRITTEN, encoding="utf-8")
    return ModelRegistry(models)


def test_promote_points_name_at_the_candidate_and_keeps_the_old_entry_and_the_rest(registry, tmp_path):
    inode = registry.path.stat().st_ino
    promotion = registry.promote("cand", "served")
    assert registry.path.stat().st_ino != inode  # replaced by a rename: readers see old or new, never half
    assert promotion.previous == "served-previous" and promotion.old.path == tmp_path / "served.gguf"
    served, previous, cand = (registry.get(n) for n in ("served", "served-previous", "cand"))
    assert (served.path, served.context_length, served.description) == (
        tmp_path / "cand.gguf",
        1024,
        "KTO tune",
    )
    assert served.temperature == 0.6
    assert (previous.path, previous.temperature) == (tmp_path / "served.gguf", 0.6)
    assert (cand.path, cand.context_length) == (tmp_path / "cand.gguf", 1024)  # the candidate stays
    text = registry.path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert data["owner"] == "ops" and data["deploy"] == {"region": "eu-west"}
    assert data["models"]["served"]["rollout"] == "canary"
    assert "# Our models. Ask Ana before changing them." in text
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_promoting_name_previous_back_is_the_rollback(registry, tmp_path):
    registry.promote("cand", "served")
    registry.promote("served-previous", "served")
    assert registry.get("served").path == tmp_path / "served.gguf"
    assert registry.get("served-previous").path == tmp_path / "cand.gguf"


def test_the_embedded_model_can_be_promoted_but_not_replaced(registry):
    registry.promote("smollm2-135m", "served")
    assert registry.get("served").path == embedded_model_path()
    with pytest.raises(RegistryError, match="embedded model and cannot be replaced"):
        registry.promote("cand", "smollm2-135m")


@pytest.mark.parametrize(
    ("candidate", "replace", "message"),
    [
        ("cand", "cand", "cannot replace itself"),
        ("nope", "served", "unknown candidate 'nope'"),
        ("cand", "nope", "'nope' is not registered"),
    ],
)
def test_promote_with_bad_names_says_why_and_changes_nothing(registry, candidate, replace, message):
    before = registry.path.read_text(encoding="utf-8")
    with pytest.raises(RegistryError, match=message):
        registry.check_promotion(candidate, replace)
    with pytest.raises(RegistryError, match=message):
        registry.promote(candidate, replace)
    assert registry.path.read_text(encoding="utf-8") == before


def test_promote_refuses_when_an_entry_changed_since_it_was_evaluated(registry, tmp_path):
    evaluated = {name: registry.get(name) for name in ("served", "cand")}
    registry.add("cand", tmp_path / "served.gguf")  # someone re-registered it meanwhile
    before = registry.path.read_text(encoding="utf-8")
    with pytest.raises(RegistryError, match="'cand' was changed"):
        registry.promote("cand", "served", expected=evaluated)
    assert registry.path.read_text(encoding="utf-8") == before


def test_promote_refuses_a_name_too_long_to_keep_its_previous_entry(registry, tmp_path):
    long_name = "m" * 60
    registry.add(long_name, tmp_path / "served.gguf")
    with pytest.raises(RegistryError, match="64 characters at most"):
        registry.promote("cand", long_name)


# -- the command, on the real embedded model -----------------------------------------------------
def twin_gguf(path: Path) -> Path:
    """The embedded model with `general.name` changed in place: same weights, new file identity."""
    import gguf

    shutil.copyfile(embedded_model_path(), path)
    reader = gguf.GGUFReader(path, "r+")
    field = reader.fields["general.name"]
    field.parts[field.data[0]][:4] = np.frombuffer(b"Twin", dtype=np.uint8)
    reader.data.flush()
    del reader
    return path


def noisy_gguf(path: Path, seed: int = 0) -> Path:
    """The embedded model with the 4-bit values of every attention q/k tensor (Q4_1 blocks: a
    2-byte scale, a 2-byte minimum, 16 bytes of values) replaced by random bytes; the scales are
    kept, so the weights stay finite and the model runs, answering nonsense."""
    import gguf

    shutil.copyfile(embedded_model_path(), path)
    reader = gguf.GGUFReader(path, "r+")
    rng = np.random.default_rng(seed)
    perturbed = 0
    for tensor in reader.tensors:
        if tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1 and tensor.name.endswith(
            (".attn_q.weight", ".attn_k.weight")
        ):
            blocks = np.asarray(tensor.data).view(np.uint8).reshape(-1, 20)
            blocks[:, 4:] = rng.integers(0, 256, size=blocks[:, 4:].shape, dtype=np.uint8)
            perturbed += 1
    assert perturbed == 60  # 30 layers × (q, k)
    reader.data.flush()
    del reader
    return path


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("variants")
    return {"twin": twin_gguf(folder / "twin.gguf"), "noisy": noisy_gguf(folder / "noisy.gguf")}


@pytest.fixture
def home(tmp_path, variants) -> Path:
    """A data folder whose models file serves `served` (the embedded file) with twin and noisy."""
    registry = ModelRegistry(tmp_path / "data" / "models.toml")
    registry.add("served", embedded_model_path(), description="the served one")
    registry.add("twin", variants["twin"])
    registry.add("noisy", variants["noisy"])
    (tmp_path / "prompts.txt").write_text("What is 2 + 2?\n", encoding="utf-8")
    return tmp_path


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORABOT_", "DISCORD_", "TELEGRAM_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        LORABOT_DATA_DIR=str(home / "data"),
        LORABOT_THREADS="1",
        COLUMNS="200",  # rich wraps at 80 columns when not on a terminal: keep each message on a line
        **extra,
    )
    return env


def promote_args(home: Path, candidate: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "lorabot", "models", "promote", candidate, "--replace", "served",
        "--prompts", str(home / "prompts.txt"), *SMALL_EVAL, *extra,
    ]  # fmt: skip


def lorabot_promote(home: Path, candidate: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        promote_args(home, candidate, *extra),
        cwd=home, env=environment(home), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def served_path(home: Path) -> Path:
    return ModelRegistry(home / "data" / "models.toml").get("served").path  # type: ignore[return-value]


def promotions(home: Path) -> list[dict]:
    log = home / "data" / "promotions.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_the_gate_refuses_a_perturbed_candidate_and_changes_nothing(home):
    before = (home / "data" / "models.toml").read_text(encoding="utf-8")
    result = lorabot_promote(home, "noisy")
    assert result.returncode == 2, result.stdout + result.stderr
    out = result.stdout
    assert "refused: noisy is worse than served: held-out perplexity" in out
    assert "more than the allowed +5%" in out and "Traceback" not in out + result.stderr
    assert (home / "data" / "models.toml").read_text(encoding="utf-8") == before
    assert promotions(home) == []
    reports = list((home / "data" / "promotions").glob("*-noisy/report.json"))
    [noisy] = [m for m in json.loads(reports[0].read_text())["models"] if m["name"] == "noisy"]
    assert noisy["perplexity"] > 100  # the embedded model's is ~20 on these two conversations


@pytest.mark.slow
def test_the_gate_passes_the_same_weights_judged_and_promotes_them(home, variants):
    result = lorabot_promote(home, "twin", "--judge", "smollm2-135m")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Promoted twin to served" in result.stdout and "kept as served-previous" in result.stdout
    assert served_path(home) == variants["twin"]
    registry = ModelRegistry(home / "data" / "models.toml")
    assert registry.get("served-previous").path == embedded_model_path()
    [record] = promotions(home)
    assert (record["name"], record["candidate"], record["forced"]) == ("served", "twin", False)
    assert record["to"]["model_file"] == file_identity(variants["twin"])
    assert record["from"]["model_file"] == file_identity(embedded_model_path())
    checks = {c["figure"]: c for c in record["gate"]["checks"]}
    assert checks["held-out perplexity"]["candidate"] == checks["held-out perplexity"]["baseline"]
    assert checks["judge win rate"]["passed"]  # identical answers: ties both ways, 50%


@pytest.mark.slow
def test_force_promotes_a_worse_candidate_logs_a_warning_and_records_it(home, variants):
    result = lorabot_promote(home, "noisy", "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" in result.stderr and "gate failed (--force)" in result.stderr
    assert "Promoted noisy to served (forced)" in result.stdout
    assert served_path(home) == variants["noisy"]
    [record] = promotions(home)
    assert record["forced"] is True and record["gate"]["passed"] is False
    assert [c["figure"] for c in record["gate"]["checks"] if c["passed"] is False] == ["held-out perplexity"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "--replace", "served"], "unknown candidate 'nope' (registered: "),
        (["twin", "--replace", "nope"], "'nope' is not registered in"),
        (["twin", "--replace", "twin"], "'twin' cannot replace itself"),
        (["twin", "--replace", "smollm2-135m"], "is the embedded model and cannot be replaced"),
        (["twin", "--replace", "served", "--min-judge-win", "2"], "--min-judge-win must be between 0 and 1"),
    ],
)
def test_bad_input_is_one_clear_line_before_any_evaluation(home, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "lorabot", "models", "promote", *args],
        cwd=home, env=environment(home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert not (home / "data" / "promotions").exists()  # refused before evaluating anything


# -- a running bot sees the promotion ----------------------------------------------------------------
def answered_turns(data_dir: Path) -> list[tuple[str, str, str]]:
    path = data_dir / "history.sqlite3"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT question, model, model_file FROM turns WHERE state = 'answered' ORDER BY id"
        ).fetchall()


@pytest.mark.slow
async def test_a_running_bot_answers_from_the_promoted_file_at_its_next_turn(home, variants):
    from bench.fakes.telegram import FakeBotAPI

    fake = FakeBotAPI()
    await fake.start()
    data_dir = home / "data"
    env = environment(
        home,
        TELEGRAM_TOKEN=fake.token,
        TELEGRAM_API_BASE_URL=fake.base_url,
        TELEGRAM_FILE_BASE_URL=fake.base_file_url,
        TELEGRAM_SHUTDOWN_GRACE_S="2",
        LORABOT_DEFAULT_MODEL="served",
        LORABOT_MAX_NEW_TOKENS="16",
        LORABOT_TEMPERATURE="0",
    )
    with (home / "bot.log").open("ab") as log:
        bot = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lorabot", "run", env=env, stdout=log, stderr=log, cwd=home
        )
    try:
        user = fake.add_user(ALICE, "Alice")
        chat = fake.private_chat(user)
        await fake.wait_for(lambda: fake.calls_of("getUpdates"), timeout=120)
        fake.send_text(user, chat, "Say hello.")
        await fake.wait_for(lambda: len(answered_turns(data_dir)) == 1, timeout=120)

        promoter = await asyncio.create_subprocess_exec(  # the fake keeps serving the bot meanwhile
            *promote_args(home, "twin"), env=environment(home), cwd=home,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(promoter.communicate(), timeout=300)
        assert promoter.returncode == 0, output.decode(errors="replace")

        fake.send_text(user, chat, "Say goodbye.")
        await fake.wait_for(lambda: len(answered_turns(data_dir)) == 2, timeout=120)
        assert bot.returncode is None  # the same process, never restarted
        first, second = answered_turns(data_dir)
        assert first == ("Say hello.", "served", file_identity(embedded_model_path()))
        assert second == ("Say goodbye.", "served", file_identity(variants["twin"]))
    finally:
        if bot.returncode is None:
            bot.terminate()
            try:
                await asyncio.wait_for(bot.wait(), timeout=30)
            except TimeoutError:
                bot.kill()
                await bot.wait()
        await fake.stop()
    log = (home / "bot.log").read_text(errors="replace")
    assert "model served changed on disk or in the registry: loading it again" in log
