"""Errors a user can act on: each message says what is wrong and what to do about it."""

from __future__ import annotations


class TrainingError(Exception):
    """Base class; the CLI prints the message and exits non-zero, without a traceback."""


class ConfigError(TrainingError):
    pass


class DatasetError(TrainingError):
    """The dataset is missing, unreadable, or has no usable conversation."""


class BadRowError(DatasetError):
    """A row is not a conversation (raised when `on_bad_row = "error"`)."""

    def __init__(self, row: int, reason: str, source: str = "") -> None:
        self.row, self.reason = row, reason
        where = f"{source}: " if source else ""
        super().__init__(
            f"{where}row {row} is not a conversation: {reason} "
            '(set on_bad_row = "skip" to drop such rows instead)'
        )


class HardwareError(TrainingError):
    """The chosen preset/backend needs hardware that is not here (e.g. CUDA for 4-bit)."""


class ExportError(TrainingError):
    """Merge, conversion or quantization failed (disk full, converter missing, ...)."""


class OutputDirError(TrainingError):
    pass


class HubError(TrainingError):
    """A Hub transfer (pull, push, hub dataset or base model) failed: not found, refused,
    unreachable, corrupt."""
