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
    """Too much waiting already: by the estimated wait, or the queue's hard cap."""

    def __init__(self, queue_depth: int, wait_s: float | None = None) -> None:
        self.queue_depth = queue_depth
        self.wait_s = wait_s
        if wait_s is None:
            why = f"{queue_depth} questions are waiting"
        else:
            why = (
                f"the wait would be about {max(1, round(wait_s / 60))} min with {queue_depth} questions ahead"
            )
        super().__init__(f"I'm busy right now ({why}). Please try again in a few minutes.")


class TooManyWaiting(ChatError):
    """The same user already has several questions waiting."""

    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        super().__init__(
            f"You already have {waiting} questions waiting; I'll answer them in order. "
            "Send more once they're answered."
        )


class BadTemperature(ChatError):
    def __init__(self, low: float, high: float) -> None:
        super().__init__(
            f"The temperature must be a number from {low:g} to {high:g} (e.g. 0.7), or 'default'."
        )


class UnknownModel(ChatError):
    def __init__(self, name: str, valid: list[str]) -> None:
        self.name = name
        self.valid = valid
        super().__init__(f"Unknown model {name!r}. Available models: {', '.join(valid)}.")


class UnknownPersona(ChatError):
    def __init__(self, name: str, valid: list[str]) -> None:
        self.name = name
        self.valid = valid
        listed = ", ".join(valid) if valid else "none yet (an admin adds them with `lorabot personas add`)"
        super().__init__(f"Unknown persona {name!r}. Personas: {listed}.")


class PersonaModelMissing(ChatError):
    """The persona names a model that is no longer registered: nothing changed."""

    def __init__(self, persona: str, model: str) -> None:
        self.persona = persona
        self.model = model
        super().__init__(
            f"Persona {persona!r} uses the model {model!r}, which is no longer registered, so it "
            "can't be chosen now. Nothing was changed; ask the bot's admin to register the model "
            "again or to change the persona (`lorabot personas add`)."
        )


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


class EngineFailed(ChatError):
    """The engine failed on this request (a failed decode, a crashed compute thread); the bot
    keeps serving, so the user may simply ask again."""

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__("The model failed while answering, so this reply stopped. Please try again.")


class EngineClosed(EngineFailed):
    """A request reached a model after it was unloaded (never a call into freed memory)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r} was already unloaded")
        self.name = name
        self.user_message = f"Model {name!r} was unloaded before it could answer. Please try again."
        self.args = (self.user_message,)


class StoreUnavailable(ChatError):
    """The history database refused a read or write (locked too long, disk full, read-only).

    Nothing else is affected: the store rolled back, and the next write works once the cause is gone.
    """

    def __init__(self, action: str = "save this conversation") -> None:
        self.action = action
        super().__init__(
            f"I couldn't {action} right now (my storage is busy or full). Please try again in a moment."
        )


class CannotRegenerate(ChatError):
    """🔁 on an answer that cannot be regenerated now; nothing changed (the old answer stays)."""
