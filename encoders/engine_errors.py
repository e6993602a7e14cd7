"""Why an engine cannot answer: the errors the service turns into a 503 or a fallback."""

from __future__ import annotations

from encoders.base import EncoderError

# Matched by class name (anywhere in the MRO or the cause chain), so the module never imports
# vLLM to recognise them and a fake engine in the tests can raise its own.
ENGINE_DEAD_ERRORS = frozenset({"EngineDeadError"})


class EncoderUnavailable(EncoderError):
    """The encoder cannot answer now: starting, dead, closed or timed out (503 / fallback)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # "starting" | "start_failed" | "dead" | "closed" | "timeout"


class EncoderTimeout(EncoderUnavailable, TimeoutError):
    """The engine did not answer within the request timeout; the requests were aborted."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "timeout")


def is_engine_dead_error(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if any(c.__name__ in ENGINE_DEAD_ERRORS for c in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
