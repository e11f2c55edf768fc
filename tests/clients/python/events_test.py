"""tern.events: typed events and jobs, and what a newer ternd may send that this client
does not know (enum values, event kinds): read as UNKNOWN, never an error."""

from tern import events
from tern._pb import job_pb2


def test_events_are_typed():
    e = events.event_from_proto(job_pb2.JobEvent(
        sequence=7, job_id="3", attempt=1,
        state_change=job_pb2.StateChange(from_state=job_pb2.JOB_STATE_RUNNING,
                                         to_state=job_pb2.JOB_STATE_SUCCEEDED)))
    assert isinstance(e, events.StateChanged) and e.terminal
    assert (e.sequence, e.job_id, e.from_state, e.to_state) == (7, "3", "RUNNING", "SUCCEEDED")
    p = events.event_from_proto(job_pb2.JobEvent(sequence=8, progress=job_pb2.Progress(step=5)))
    assert isinstance(p, events.ProgressEvent) and p.data.step == 5 and "step 5/0" in repr(p)
    log = events.event_from_proto(job_pb2.JobEvent(log=job_pb2.LogLine(rank=1, text="hi")))
    assert (log.rank, log.text) == (1, "hi")


def test_phase_switch_reads_top1_or_detection_ap50():
    c = events.event_from_proto(job_pb2.JobEvent(phase_switch=job_pb2.PhaseSwitch(
        step=84, eval_split="val", fp_top1=0.8, ternary_top1=0.1, ternary_bn_top1=0.7)))
    assert isinstance(c, events.PhaseSwitch)
    assert "val top-1 FP 80.00%, ternary 10.00%, after BatchNorm re-estimation 70.00%" in repr(c)
    d = events.event_from_proto(job_pb2.JobEvent(phase_switch=job_pb2.PhaseSwitch(
        step=10, eval_split="val", fp_detection=job_pb2.DetectionMetrics(ap=0.2, ap50=0.5),
        ternary_detection=job_pb2.DetectionMetrics(ap=0.01, ap50=0.03))))
    assert "val AP50 FP 50.00%, ternary 3.00%" in repr(d) and "re-estimation" not in repr(d)


def test_results_read_top1_or_detection_ap50_and_the_validation_split():
    c = events.event_from_proto(job_pb2.JobEvent(finished=job_pb2.JobResult(
        fp_top1=0.92, ternary_top1=0.912, val_ternary_top1=0.9, bits_per_weight=2)))
    assert "top-1 91.20% (validation top-1 90.00%), 2.00 bits/weight" in repr(c)
    d = events.event_from_proto(job_pb2.JobEvent(finished=job_pb2.JobResult(
        ternary_detection=job_pb2.DetectionMetrics(ap=0.2, ap50=0.451),
        val_ternary_detection=job_pb2.DetectionMetrics(ap=0.3, ap50=0.6))))
    assert "AP50 45.10% (validation AP50 60.00%)" in repr(d) and "top-1" not in repr(d)
    fp = events.event_from_proto(job_pb2.JobEvent(finished=job_pb2.JobResult(fp_top1=0.9)))
    assert "top-1 90.00%" in repr(fp) and "validation" not in repr(fp)


def test_unknown_values_from_a_newer_server_do_not_crash():
    # A JobEvent whose oneof holds field 99 (a kind this client lacks), a state 42.
    unknown_kind = job_pb2.JobEvent(sequence=9, job_id="1").SerializeToString() + \
        bytes([0x9A, 0x06, 0])  # field 99, length-delimited, empty (varint tag 99 << 3 | 2)
    e = events.event_from_proto(job_pb2.JobEvent.FromString(unknown_kind))
    assert isinstance(e, events.UnknownEvent) and e.sequence == 9 and e.data is None
    assert "unknown kind" in repr(e)
    change = events.event_from_proto(job_pb2.JobEvent.FromString(job_pb2.JobEvent(
        state_change=job_pb2.StateChange(to_state=job_pb2.JOB_STATE_RUNNING)).SerializeToString()
        .replace(bytes([0x10, job_pb2.JOB_STATE_RUNNING]), bytes([0x10, 42]))))
    assert change.to_state == "UNKNOWN_42" and not change.terminal
    job = events.Job(job_pb2.Job.FromString(bytes([0x18, 42]) + b"\x0a\x01x"))
    assert (job.id, job.state, job.terminal) == ("x", "UNKNOWN_42", False)
    assert "UNKNOWN_42" in repr(job) and job.to_dict()["id"] == "x"


def test_cancelling_is_not_terminal_and_failures_are_data():
    job = events.Job(job_pb2.Job(id="5", state=job_pb2.JOB_STATE_CANCELLING))
    assert (job.state, job.terminal, job.last_failure) == ("CANCELLING", False, None)
    change = events.event_from_proto(job_pb2.JobEvent(state_change=job_pb2.StateChange(
        from_state=job_pb2.JOB_STATE_RUNNING, to_state=job_pb2.JOB_STATE_CANCELLING)))
    assert change.to_state == "CANCELLING" and not change.terminal
    done = events.event_from_proto(job_pb2.JobEvent(state_change=job_pb2.StateChange(
        from_state=job_pb2.JOB_STATE_CANCELLING, to_state=job_pb2.JOB_STATE_CANCELLED)))
    assert done.terminal
    failed = events.Job(job_pb2.Job(
        id="6", state=job_pb2.JOB_STATE_RESTARTING, checkpoint_directory="/ckpt/job-6",
        last_failure=job_pb2.JobFailure(attempt=1, rank=1, signal=9, reason="RANK_LOST")))
    assert failed.last_failure.signal == 9 and failed.last_failure.reason == "RANK_LOST"
    assert failed.checkpoint_directory == "/ckpt/job-6" and not failed.terminal
