"""Typed views of tern.v1 messages: Job and the events of WatchJob.

Enum values are short upper-case names ("RUNNING", "SUCCEEDED"); a value this client
does not know (sent by a newer ternd) reads "UNKNOWN_<number>", and an event of a kind
it does not know is an UnknownEvent: neither is an error. Every object keeps the
message it was made from in `.proto` for the fields it does not name.
"""

import datetime

from google.protobuf import json_format

from tern._pb import enum_name, job_pb2

# Every other state (QUEUED, ADMITTED, RUNNING, RESTARTING, CANCELLING: ranks still
# stopping) and any state this client does not know is not terminal: keep watching.
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


def state_name(value):
    """A JobState number as "RUNNING" (or "UNKNOWN_<n>")."""
    return enum_name(job_pb2.JobState, value, "JOB_STATE_")


def _time(ts):
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return datetime.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=datetime.timezone.utc)


class Job:
    """One job (tern.v1.Job). `created` and `idempotency_key` are set by Client.submit."""

    def __init__(self, proto, created=None, idempotency_key=None):
        self.proto = proto
        self.created = created
        self.idempotency_key = idempotency_key

    id = property(lambda self: self.proto.id)
    state = property(lambda self: state_name(self.proto.state))
    state_reason = property(lambda self: self.proto.state_reason)
    wait_reason = property(lambda self: self.proto.wait_reason)
    spec = property(lambda self: self.proto.spec)  # as submitted (owner filled in)
    # The spec the trainers run with: defaults filled in, checkpoint directory resolved.
    effective_spec = property(lambda self: self.proto.effective_spec)
    checkpoint_directory = property(lambda self: self.proto.checkpoint_directory)
    # Changes exactly when an update changes the job: Client.update(..., etag=job.etag).
    etag = property(lambda self: self.proto.etag)
    # The latest rank failure (a tern.v1.JobFailure), or None.
    last_failure = property(
        lambda self: self.proto.last_failure if self.proto.HasField("last_failure") else None)
    restarts = property(lambda self: self.proto.restarts)
    progress = property(lambda self: self.proto.progress if self.proto.HasField("progress") else None)
    latest_metrics = property(
        lambda self: self.proto.latest_metrics if self.proto.HasField("latest_metrics") else None)
    result = property(lambda self: self.proto.result if self.proto.HasField("result") else None)
    create_time = property(lambda self: _time(self.proto.create_time))
    end_time = property(lambda self: _time(self.proto.end_time))

    @property
    def terminal(self):
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self):
        return self.state == "SUCCEEDED"

    def to_dict(self):
        """The job as proto3 JSON (snake_case keys), as `ternctl get --json` prints it."""
        return json_format.MessageToDict(self.proto, preserving_proto_field_name=True)

    def __repr__(self):
        return f"Job(id={self.id!r}, state={self.state}, name={self.spec.name!r})"


class Event:
    """One entry of a job's history. `kind` is the JobEvent oneof's name; `data` its message."""

    kind = None

    def __init__(self, proto):
        self.proto = proto
        self.data = getattr(proto, self.kind) if self.kind else None

    sequence = property(lambda self: self.proto.sequence)
    job_id = property(lambda self: self.proto.job_id)
    attempt = property(lambda self: self.proto.attempt)
    time = property(lambda self: _time(self.proto.time))

    def __repr__(self):
        return f"{type(self).__name__}(job={self.job_id!r}, seq={self.sequence}, {self._describe()})"

    def _describe(self):
        return ""


class StateChanged(Event):
    kind = "state_change"
    from_state = property(lambda self: state_name(self.data.from_state))
    to_state = property(lambda self: state_name(self.data.to_state))
    reason = property(lambda self: self.data.reason)

    @property
    def terminal(self):
        return self.to_state in TERMINAL_STATES

    def _describe(self):
        return f"{self.from_state} -> {self.to_state} ({self.reason.code})"


class ProgressEvent(Event):
    kind = "progress"

    def _describe(self):
        p = self.data
        return f"epoch {p.epoch}/{p.epochs}, step {p.step}/{p.total_steps}, loss {p.loss:.4f}"


class EpochEnded(Event):
    kind = "epoch_end"
    metrics = property(lambda self: self.data.metrics)

    def _describe(self):
        m = self.metrics
        top1 = m.ternary_top1 if m.HasField("ternary_top1") else m.fp_top1
        return f"epoch {m.epoch}, {m.eval_split} top-1 {100 * top1:.2f}%"


class CheckpointCommitted(Event):
    kind = "checkpoint_committed"

    def _describe(self):
        return f"step {self.data.step}, {self.data.path}"


class AttemptStarted(Event):
    kind = "attempt_started"

    def _describe(self):
        return f"from step {self.data.resumed_from_step} on {self.data.device}"


def _quality(ternary_top1, fp_top1, ternary_det, fp_det):
    """ "top-1 x%" of the ternary (else FP) model, or "AP50 x%" for detection; None without one."""
    if ternary_det.HasField("ap") or fp_det.HasField("ap"):
        return f"AP50 {100 * (ternary_det if ternary_det.HasField('ap') else fp_det).ap50:.2f}%"
    value = ternary_top1 if ternary_top1 is not None else fp_top1
    return None if value is None else f"top-1 {100 * value:.2f}%"


def _describe_result(r):
    def opt(name):
        return getattr(r, name) if r.HasField(name) else None
    text = _quality(opt("ternary_top1"), opt("fp_top1"), r.ternary_detection, r.fp_detection) or \
        "no accuracy"
    val = _quality(opt("val_ternary_top1"), opt("val_fp_top1"), r.val_ternary_detection,
                   r.val_fp_detection)
    if val:
        text += f" (validation {val})"
    return f"{text}, {r.bits_per_weight:.2f} bits/weight, {r.artifact_bytes} bytes"


class TrainerFinished(Event):
    kind = "trainer_finished"
    _describe = lambda self: _describe_result(self.data)  # noqa: E731


class Finished(Event):
    """The job SUCCEEDED with `data` (a JobResult: metrics, the artifact's digest)."""

    kind = "finished"
    _describe = lambda self: _describe_result(self.data)  # noqa: E731


class PhaseSwitch(Event):
    """HLA's switch to the ternary forward: eval top-1 before, after, after BatchNorm re-estimation."""

    kind = "phase_switch"

    def _describe(self):
        d = self.data
        if d.fp_detection.HasField("ap") or d.ternary_detection.HasField("ap"):  # detection: AP50
            name, fp, ternary = "AP50", d.fp_detection.ap50, d.ternary_detection.ap50
            bn = d.ternary_bn_detection.ap50 if d.ternary_bn_detection.HasField("ap") else None
        else:
            name, fp, ternary = "top-1", d.fp_top1, d.ternary_top1
            bn = d.ternary_bn_top1 if d.HasField("ternary_bn_top1") else None
        text = f"step {d.step}: {d.eval_split} {name} FP {100 * fp:.2f}%, ternary {100 * ternary:.2f}%"
        if bn is not None:
            text += f", after BatchNorm re-estimation {100 * bn:.2f}%"
        return text


class LogLine(Event):
    kind = "log"
    rank = property(lambda self: self.data.rank)
    text = property(lambda self: self.data.text)

    def _describe(self):
        return f"rank {self.rank}: {self.text}"


class UnknownEvent(Event):
    """An event of a kind this client does not know (a newer ternd): `proto` holds it."""

    def _describe(self):
        return "unknown kind"


_BY_KIND = {cls.kind: cls for cls in (StateChanged, ProgressEvent, EpochEnded, CheckpointCommitted,
                                      AttemptStarted, TrainerFinished, Finished, PhaseSwitch,
                                      LogLine)}


def event_from_proto(proto):
    """The typed Event of a tern.v1.JobEvent."""
    return _BY_KIND.get(proto.WhichOneof("kind"), UnknownEvent)(proto)
