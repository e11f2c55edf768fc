"""Exceptions of the tern client, one per gRPC status code ternd answers with.

ternd's own verdicts (job_service.proto): INVALID_ARGUMENT naming the field
("spec.optimization.epochs: must be > 0"), NOT_FOUND, ALREADY_EXISTS,
FAILED_PRECONDITION, PERMISSION_DENIED; UNAUTHENTICATED for a missing or
unknown token; UNAVAILABLE and DEADLINE_EXCEEDED come from the transport and
are safe to retry. Every exception is a TernError carrying `code` (the
grpc.StatusCode name) and `message` (ternd's text).
"""

import re


class TernError(Exception):
    """A failed call. `code`: the gRPC status name ("NOT_FOUND"); `message`: the detail."""

    code = "UNKNOWN"

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self):
        return f"{self.code}: {self.message}"


class InvalidArgument(TernError, ValueError):
    """A bad request. `field`: the path the message starts with ("spec.optimization.epochs"),
    or None when the message names none."""

    code = "INVALID_ARGUMENT"
    _FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(?:\.[A-Za-z0-9_/-]+(?:\[\d+\])?)*)"
                        r"(?: \(line \d+\))?: ")

    def __init__(self, message, code=None, field=None):
        super().__init__(message, code)
        if field is None:
            m = self._FIELD.match(message)
            field = m.group(1) if m else None
        self.field = field


class SpecError(InvalidArgument):
    """A job spec this client refused before sending it (same wording as ternctl's)."""


class NotFound(TernError, LookupError):
    code = "NOT_FOUND"


class AlreadyExists(TernError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(TernError):
    code = "FAILED_PRECONDITION"


class PermissionDenied(TernError, PermissionError):
    code = "PERMISSION_DENIED"


class Unauthenticated(TernError, PermissionError):
    code = "UNAUTHENTICATED"


class ResourceExhausted(TernError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(TernError, ConnectionError):
    """ternd cannot be reached; safe to retry."""

    code = "UNAVAILABLE"


class DeadlineExceeded(TernError, TimeoutError):
    code = "DEADLINE_EXCEEDED"


class DigestMismatch(TernError):
    """A downloaded artifact whose size or SHA-256 differs from what ternd announced
    (nothing is written at the destination)."""

    code = "DATA_LOSS"


class JobFailed(TernError):
    """Client.wait(): the job ended FAILED or CANCELLED. `job`: the final Job."""

    def __init__(self, job):
        reason = job.state_reason
        super().__init__(f"job {job.id} ended {job.state}: {reason.code}: {reason.message}",
                         code=job.state)
        self.job = job


_BY_CODE = {cls.code: cls for cls in (InvalidArgument, NotFound, AlreadyExists,
                                      FailedPrecondition, PermissionDenied, Unauthenticated,
                                      ResourceExhausted, Unavailable, DeadlineExceeded)}


def from_rpc_error(error):
    """The TernError for a grpc.RpcError (another code: a plain TernError carrying it)."""
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    return _BY_CODE.get(name, TernError)(error.details() or name, code=name)
