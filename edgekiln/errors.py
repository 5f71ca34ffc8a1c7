"""One exception class per kind of user error, each with its own exit code.

A user error prints one line (what is wrong, what to do) and no traceback; ``--debug`` shows it.
"""

from __future__ import annotations


class EdgekilnError(Exception):
    """Base class: ``exit_code`` is what the program exits with, ``hint`` what to do."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    # True once the command printed its JSON result with this error in it (--json): the CLI
    # then prints no second JSON document
    json_done = False

    def line(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message

    def to_json(self) -> dict:
        return {"kind": self.kind, "exit_code": self.exit_code, "message": self.message, "hint": self.hint}

    __str__ = line


class UsageError(EdgekilnError):
    """A bad option value or combination."""

    exit_code = 2
    kind = "usage"


class ModelNotFound(EdgekilnError):
    exit_code = 3
    kind = "model_not_found"


class InvalidModel(EdgekilnError):
    """The file exists but is not a model edgekiln can read (empty, truncated, wrong format)."""

    exit_code = 4
    kind = "invalid_model"


class TargetError(EdgekilnError):
    """Unknown target, or a precision the target does not offer."""

    exit_code = 5
    kind = "target"


class DataError(EdgekilnError):
    """Calibration or validation data missing, empty, unreadable or too small."""

    exit_code = 6
    kind = "data"


class ShapeError(EdgekilnError):
    """The input spec does not match the model."""

    exit_code = 7
    kind = "shape"


class UnsupportedModel(EdgekilnError):
    """A converter cannot handle the model (an op it does not know, two inputs, ...)."""

    exit_code = 8
    kind = "unsupported"


class StepFailed(EdgekilnError):
    """A conversion step crashed (not a user error we recognised): see its log."""

    exit_code = 9
    kind = "step_failed"


class ValidationFailed(EdgekilnError):
    """An artifact converted but answers too differently from the source model."""

    exit_code = 10
    kind = "validation"


class EnvironmentFailed(EdgekilnError):
    """A build environment (virtualenv, Docker engine or image) could not be made or reached."""

    exit_code = 11
    kind = "environment"


class PublishConflict(EdgekilnError):
    """A published version exists with different inputs; versions are never overwritten."""

    exit_code = 12
    kind = "publish_conflict"


class IntegrityError(EdgekilnError):
    """Bytes differ from what was recorded: a released file changed (verify), or a rebuild gave
    other bytes than the release (release --check)."""

    exit_code = 13
    kind = "integrity"


class DeviceRefused(EdgekilnError):
    """The device is not the one a TensorRT bundle was made for (no TensorRT there, another
    TensorRT / L4T release / GPU): its preflight refused, nothing was built, the bundle stays pending."""

    exit_code = 14
    kind = "device_refused"


class BrokerUnreachable(EdgekilnError):
    """``--broker``/``edgekiln worker``: the message broker (Redis) does not answer."""

    exit_code = 20
    kind = "broker_unreachable"


class NoWorker(EdgekilnError):
    """Work waits on a queue that no worker serves (after the bounded wait)."""

    exit_code = 21
    kind = "no_worker"


class WorkerMismatch(EdgekilnError):
    """A worker refused a task: another edgekiln version or another set of recipes/locks."""

    exit_code = 22
    kind = "worker_mismatch"


class Interrupted(EdgekilnError):
    exit_code = 130
    kind = "interrupted"


# The kinds a converter script reports through ekit.fail(kind, message).
BY_KIND = {
    cls.kind: cls
    for cls in (
        UsageError, ModelNotFound, InvalidModel, TargetError, DataError, ShapeError,
        UnsupportedModel, StepFailed, ValidationFailed, EnvironmentFailed, PublishConflict, DeviceRefused,
        IntegrityError, BrokerUnreachable, NoWorker, WorkerMismatch,
    )
}
