"""Exceptions of the tern client, one per gRPC status code ternd answers with.

ternd's own verdicts (job_service.proto): INVALID_ARGUMENT naming the field
("spec.optimization.epochs: must be > 0"), NOT_FOUND (also for another owner's
job), ALREADY_EXISTS, FAILED_PRECONDITION, PERMISSION_DENIED, RESOURCE_EXHAUSTED, ABORTED;
UNAUTHENTICATED for a missing or unknown token; UNAVAILABLE and DEADLINE_EXCEEDED
come from the transport (or a stopping ternd) and are safe to retry.

Every exception is a TernError carrying `code` (the grpc.StatusCode name) and
`message` (ternd's text), and the error as data, decoded from the call's
`grpc-status-details-bin` trailer (a google.rpc.Status):
  reason            ErrorInfo.reason, e.g. "SPEC_INVALID", "JOB_NOT_FOUND" (the
                    table in job_service.proto); None when ternd sent none
  metadata          ErrorInfo.metadata as a dict, e.g. {"job_id": "42"}
  field_violations  BadRequest: a list of FieldViolation(field, description)
  quota_violations  QuotaFailure: a list of QuotaViolation(subject, description)
  retry_delay       RetryInfo.retry_delay in seconds (float), or None
Branch on `reason`, never on the message text.
"""

import collections
import re

FieldViolation = collections.namedtuple("FieldViolation", "field description")
QuotaViolation = collections.namedtuple("QuotaViolation", "subject description")

_DETAILS_KEY = "grpc-status-details-bin"


class TernError(Exception):
    """A failed call. `code`: the gRPC status name ("NOT_FOUND"); `message`: the detail;
    `reason`, `metadata`, `field_violations`, `quota_violations`, `retry_delay`: the
    error's data (see the module's documentation)."""

    code = "UNKNOWN"

    def __init__(self, message, code=None, *, reason=None, metadata=None, field_violations=(),
                 quota_violations=(), retry_delay=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations)
        self.quota_violations = list(quota_violations)
        self.retry_delay = retry_delay

    def __str__(self):
        return f"{self.code}: {self.message}"


class InvalidArgument(TernError, ValueError):
    """A bad request. `field`: the first violated field's path ("spec.optimization.epochs"),
    from the details or else from the message, or None when neither names one."""

    code = "INVALID_ARGUMENT"
    _FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(?:\.[A-Za-z0-9_/-]+(?:\[\d+\])?)*)"
                        r"(?: \(line \d+\))?: ")

    def __init__(self, message, code=None, field=None, **details):
        super().__init__(message, code, **details)
        if field is None and self.field_violations:
            field = self.field_violations[0].field
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


class Aborted(TernError):
    """A conditional write whose condition no longer holds: Client.update() with an `etag`
    the job no longer has (reason "ETAG_MISMATCH"; metadata["etag"] is the current one).
    Read the job again and reapply the change."""

    code = "ABORTED"


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
                                      ResourceExhausted, Aborted, Unavailable,
                                      DeadlineExceeded)}


def decode_details(serialized):
    """The keyword arguments of TernError (reason, metadata, field_violations,
    quota_violations, retry_delay) from a serialized google.rpc.Status; {} when the
    bytes are empty or not one."""
    if not serialized:
        return {}
    from tern._pb import rpc_error_details_pb2 as details_pb2, rpc_status_pb2
    from google.protobuf.message import DecodeError
    status = rpc_status_pb2.Status()
    try:
        status.ParseFromString(serialized)
    except DecodeError:
        return {}
    out = {"field_violations": [], "quota_violations": []}
    for any_message in status.details:
        info = details_pb2.ErrorInfo()
        bad = details_pb2.BadRequest()
        quota = details_pb2.QuotaFailure()
        retry = details_pb2.RetryInfo()
        if any_message.Unpack(info):
            out["reason"] = info.reason or None
            out["metadata"] = dict(info.metadata)
        elif any_message.Unpack(bad):
            out["field_violations"] += [FieldViolation(v.field, v.description)
                                        for v in bad.field_violations]
        elif any_message.Unpack(quota):
            out["quota_violations"] += [QuotaViolation(v.subject, v.description)
                                        for v in quota.violations]
        elif any_message.Unpack(retry):
            out["retry_delay"] = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return out


def _details_of(error):
    """The serialized google.rpc.Status in a grpc.RpcError's trailing metadata, or b""."""
    trailing = getattr(error, "trailing_metadata", None)
    try:
        pairs = trailing() if callable(trailing) else ()
    except Exception:  # noqa: BLE001 - an RpcError without a call (e.g. a channel error)
        pairs = ()
    for key, value in pairs or ():
        if key == _DETAILS_KEY:
            return value if isinstance(value, bytes) else value.encode("latin-1")
    return b""


def from_rpc_error(error):
    """The TernError for a grpc.RpcError (another code: a plain TernError carrying it),
    with the error's details decoded from its trailing metadata."""
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    return _BY_CODE.get(name, TernError)(error.details() or name, code=name,
                                         **decode_details(_details_of(error)))
