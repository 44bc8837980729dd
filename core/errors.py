"""User-facing errors. Each carries a message an adapter can show as is."""

from __future__ import annotations


class ChatError(Exception):
    """Base for every error whose text is safe and useful to show the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.user_message = message


class EmptyMessage(ChatError):
    def __init__(self) -> None:
        super().__init__("Your message is empty. Type something and I'll answer.")


class RateLimited(ChatError):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"You're sending messages too fast. Try again in {retry_after:.0f} s.")


class Busy(ChatError):
    def __init__(self, queue_depth: int) -> None:
        self.queue_depth = queue_depth
        super().__init__(
            f"I'm busy right now ({queue_depth} requests waiting). Please try again in a minute."
        )


class AlreadyAnswering(ChatError):
    """The same user already has a request waiting in this conversation."""

    def __init__(self) -> None:
        super().__init__("I'm still answering your previous message here. One at a time, please.")


class UnknownModel(ChatError):
    def __init__(self, name: str, valid: list[str]) -> None:
        self.name = name
        self.valid = valid
        super().__init__(f"Unknown model {name!r}. Available models: {', '.join(valid)}.")


class ModelLoadError(ChatError):
    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"Model {name!r} could not be loaded: {reason}")


class GenerationTimeout(ChatError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"The model took longer than {seconds:.0f} s to answer, so I stopped it.")


class ShuttingDown(ChatError):
    def __init__(self) -> None:
        super().__init__("lorabot is shutting down; your request was not answered.")


class StoreUnavailable(ChatError):
    """The history database refused a read or write (locked too long, disk full, read-only).

    Nothing else is affected: the store rolled back, and the next write works once the cause is gone.
    """

    def __init__(self, action: str = "save this conversation") -> None:
        self.action = action
        super().__init__(
            f"I couldn't {action} right now (my storage is busy or full). Please try again in a moment."
        )
