"""The models file under concurrent writers, hand edits and read-only mounts.

`models add`, `models pull` and `train --register` are separate processes that all rewrite
models.toml: they used to read it, change it and write it back through a fixed `models.tmp`
with no lock (two writers x 40 adds kept 61 of 80 entries), dropping comments and any table
they did not know; a read-only models file (docker compose mounted it `:ro`) gave a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from core.registry import ModelRegistry, RegistryError

ROOT = Path(__file__).resolve().parents[2]
ADDS = 40

WRITER = """
import sys
from pathlib import Path
from core.registry import ModelRegistry

registry = ModelRegistry(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()  # both writers start together
for i in range(int(sys.argv[3])):
    registry.add(f"{sys.argv[2]}-{i}", Path(sys.argv[4]), description=f"writer {sys.argv[2]}")
"""

HAND_WRITTEN = """\
# Our models. Ask Ana before changing the defaults.
owner = "ops"            # a key lorabot does not know

[models.faq]             # the FAQ tune
path = "/srv/faq.gguf"
temperature = 0.6
rollout = "canary"       # a key of a newer lorabot

# the GPU box
[models.big]
urls = ["http://gpu-1:8000/v1"]

[deploy]                 # a table lorabot does not know
region = "eu-west"
hosts = [
  ["a", 1],
]
"""


def env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("LORABOT_", "DISCORD_", "TELEGRAM_"))}
    return {**keep, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


def test_two_processes_adding_at_once_keep_every_entry(tmp_path, embedded_gguf):
    models = tmp_path / "models.toml"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(models), name, str(ADDS), str(embedded_gguf)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        for name in ("a", "b")
    ]
    for writer in writers:
        assert writer.stdout.readline().strip() == "ready"
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.flush()
    for writer in writers:
        _, errors = writer.communicate(timeout=120)
        assert writer.returncode == 0, errors
    names = set(tomllib.loads(models.read_text())["models"])
    assert names == {f"{writer}-{i}" for writer in ("a", "b") for i in range(ADDS)}
    assert set(ModelRegistry(models).names()) >= names
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob("*.tmp"))  # no temporary left


def test_comments_and_unknown_tables_survive_add_and_remove(tmp_path, embedded_gguf):
    models = tmp_path / "models.toml"
    models.write_text(HAND_WRITTEN)
    registry = ModelRegistry(models)
    registry.add("new", embedded_gguf, description="added")
    registry.add("faq", Path("/srv/faq-v2.gguf"))  # replaced where it stands
    registry.remove("big")
    text = models.read_text()
    for kept in (
        "# Our models. Ask Ana before changing the defaults.",
        'owner = "ops"            # a key',
        "[deploy]                 # a table lorabot does not know",
        'region = "eu-west"',
    ):
        assert kept in text, text
    data = tomllib.loads(text)
    assert data["owner"] == "ops" and data["deploy"] == {"region": "eu-west", "hosts": [["a", 1]]}
    assert data["models"]["faq"] == {"path": "/srv/faq-v2.gguf"}
    assert set(data["models"]) == {"faq", "new"}
    assert text.index("[models.faq]") < text.index("[deploy]")  # in its place, not moved to the end
    assert registry.problem is None and registry.get("new").description == "added"


def test_unknown_keys_of_other_entries_survive_an_add(tmp_path, embedded_gguf):
    models = tmp_path / "models.toml"
    models.write_text(HAND_WRITTEN)
    ModelRegistry(models).add("other", embedded_gguf)
    faq = tomllib.loads(models.read_text())["models"]["faq"]
    assert faq == {"path": "/srv/faq.gguf", "temperature": 0.6, "rollout": "canary"}
    assert 'rollout = "canary"       # a key of a newer lorabot' in models.read_text()


def test_an_entry_written_as_an_inline_table_is_rewritten_with_its_data(tmp_path, embedded_gguf):
    models = tmp_path / "models.toml"
    models.write_text(
        '# note\nmodels = { old = { path = "/srv/old.gguf", rollout = "x" } }\n[deploy]\nregion = "eu"\n'
    )
    ModelRegistry(models).add("new", embedded_gguf)
    data = tomllib.loads(models.read_text())
    assert data["models"]["old"] == {"path": "/srv/old.gguf", "rollout": "x"}
    assert set(data["models"]) == {"old", "new"} and data["deploy"] == {"region": "eu"}


# -- a models file that cannot be written --------------------------------------------------------
def lorabot_restricted(tmp_path: Path, models: Path, *args: str) -> subprocess.CompletedProcess:
    """`lorabot ARGS` as a user bound by file permissions, as a bot container's user is: root may
    write anything, so as root the process runs without CAP_DAC_OVERRIDE."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions cannot bind this process")
        prefix = ["setpriv", "--inh-caps=-dac_override", "--bounding-set=-dac_override"]
    environment = {**env(), "LORABOT_DATA_DIR": str(tmp_path / "data"), "LORABOT_MODELS_FILE": str(models)}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "lorabot", *args], cwd=tmp_path, env=environment,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def assert_clear_refusal(result: subprocess.CompletedProcess, *words: str) -> None:
    out = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert result.returncode == 2, out
    assert "Traceback" not in out and "cannot write the models file" in out, out
    for word in words:
        assert word in out, out


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_models_file_gives_a_clear_message(tmp_path, embedded_gguf, what):
    """'file': the file is read-only; 'folder': the file is writable but its folder is not (no
    lock or temporary file can be made next to it, as in a container's root-owned /config)."""
    config = tmp_path / "config"
    config.mkdir()
    models = config / "models.toml"
    models.write_text(HAND_WRITTEN)
    models.chmod(0o444 if what == "file" else 0o644)
    config.chmod(0o755 if what == "file" else 0o555)
    try:
        for args in (("models", "add", "mine", str(embedded_gguf)), ("models", "remove", "faq")):
            assert_clear_refusal(lorabot_restricted(tmp_path, models, *args), "read-only")
        assert models.read_text() == HAND_WRITTEN
        assert sorted(p.name for p in config.iterdir()) == ["models.toml"]
    finally:
        config.chmod(0o755)


@pytest.mark.parametrize(("mode", "says"), [("ro", "read-only"), ("rw", "mount its folder")])
def test_a_models_file_mounted_on_its_own_gives_a_clear_message(tmp_path, embedded_gguf, mode, says):
    """What docker compose did: the file bind-mounted on its own. Read-only, nothing can write
    it (EROFS); writable, it still cannot be replaced by a rename (EBUSY): mount the folder."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to make a bind mount")
    models = tmp_path / "models.toml"
    models.write_text(HAND_WRITTEN)
    script = f'mount --bind -o {mode} "{models}" "{models}" && exec "$@"'
    environment = {**env(), "LORABOT_DATA_DIR": str(tmp_path / "data"), "LORABOT_MODELS_FILE": str(models)}
    for args in (("models", "add", "mine", str(embedded_gguf)), ("models", "remove", "faq")):
        result = subprocess.run(
            ["unshare", "--mount", "sh", "-c", script, "sh", sys.executable, "-m", "lorabot", *args],
            cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if "mount:" in result.stderr or "unshare:" in result.stderr:
            pytest.skip(f"no bind mounts here: {result.stderr.strip()}")
        assert_clear_refusal(result, says)
    assert models.read_text() == HAND_WRITTEN
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_the_registry_raises_registry_error_for_an_unwritable_place(tmp_path):
    """In-process: a models file whose folder is a file cannot be written: a RegistryError."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(RegistryError, match="cannot write the models file"):
        ModelRegistry(blocker / "models.toml").add("x", urls=["http://gpu-1:8000/v1"])
