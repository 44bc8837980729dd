"""The `lorabot` command line (Typer): the root that mounts each part's commands.

Serving (`lorabot.serve`), the models registry (`lorabot.models`, and `lorabot.personas`),
benchmarks (`lorabot.bench`), the chats' feedback (`lorabot.feedback`: export and report),
and training / evaluation from `training/`. Commands whose extra is not installed still appear
and say which extra to install.
"""

from __future__ import annotations

import typer

from lorabot import bench, feedback, models, personas, serve
from lorabot.common import LOOSE, missing_extra

app = typer.Typer(
    help="lorabot: chat with your own fine-tuned GGUF models on Discord, Telegram or a terminal.",
    no_args_is_help=True,
)
serve.mount(app)
app.add_typer(models.app, name="models")
app.add_typer(personas.app, name="personas")
app.add_typer(bench.app, name="bench")
app.add_typer(feedback.app, name="feedback")


def _mount_training() -> None:
    """`train`, `export` (the `train` extra) and `eval` (the `eval` extra)."""
    try:
        from training import cli as training_cli
    except ImportError as error:
        app.command("train", context_settings=LOOSE)(missing_extra("train", "train", error))
        app.command("export", context_settings=LOOSE)(missing_extra("export", "train", error))
    else:
        app.command("train")(training_cli.train)
        app.command("export")(training_cli.export)
    try:
        from training.evaluate.cli import eval as eval_command
    except ImportError as error:
        app.command("eval", context_settings=LOOSE)(missing_extra("eval", "eval", error))
    else:
        app.command("eval")(eval_command)


_mount_training()

if __name__ == "__main__":  # pragma: no cover
    app()
