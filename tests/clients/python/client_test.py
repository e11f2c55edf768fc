"""tern.Client against a real ternd + tern-agent + tern-trainer (conftest.py)."""

import hashlib
import os
import time

import grpc
import numpy as np
import pytest

import tern
from tern import errors
from conftest import BASE3_JOB, FASHION_MNIST, ROOT, load_reference_trainer


def test_watch_resumes_after_the_stream_drops(client, jobs, dropped_watch):
    seen, connections = dropped_watch
    assert not isinstance(seen[2], tern.Finished), "the job ended before the drop"
    assert connections >= 2, "the stream was not broken and resumed"
    direct = list(client.watch(jobs["base3"].id))
    assert [e.sequence for e in seen] == [e.sequence for e in direct]
    assert isinstance(seen[-1], tern.Finished)


def test_watch_follows_the_job_to_success(finished):
    for name, (job, events) in finished.items():
        assert job.state == "SUCCEEDED", f"{name}: {job.state_reason}"
        sequences = [e.sequence for e in events]
        assert sequences[0] == 1 and sequences == sorted(set(sequences))
        kinds = [e.kind for e in events]
        assert kinds[-2:] == ["state_change", "finished"]
        assert "progress" in kinds and "epoch_end" in kinds and "attempt_started" in kinds
        assert [(e.from_state, e.to_state) for e in events if isinstance(e, tern.StateChanged)][-1] \
            == ("RUNNING", "SUCCEEDED")
        assert events[-1].data.artifact_sha256 == job.result.artifact_sha256


def test_watch_from_a_sequence_gives_the_rest(client, finished):
    job, events = finished["hla"]
    middle = events[len(events) // 2].sequence
    rest = list(client.watch(job.id, from_seq=middle))
    assert [e.sequence for e in rest] == [e.sequence for e in events if e.sequence >= middle]
    assert list(client.watch(job.id, from_seq=events[-1].sequence + 1)) == []


def test_fetch_verifies_the_digest_and_writes_the_file(client, finished, fetched, tmp_path):
    for name, path in fetched.items():
        job = finished[name][0]
        with open(path, "rb") as f:
            data = f.read()
        assert hashlib.sha256(data).hexdigest() == job.result.artifact_sha256
        assert len(data) == job.result.artifact_bytes
        assert not [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".part")]
    target = tmp_path / "named.tern"
    assert client.fetch(finished["hla"][0].id, target, progress=False) == str(target)
    assert target.read_bytes() == open(fetched["hla"], "rb").read()


def load_test_split(limit):
    reference = load_reference_trainer()
    images = reference.read_idx(reference.idx_file(FASHION_MNIST, "t10k-images-idx3-ubyte"))
    labels = reference.read_idx(reference.idx_file(FASHION_MNIST, "t10k-labels-idx1-ubyte"))
    return images[:limit, None], labels[:limit].astype(np.int64)


def test_artifact_reproduces_terns_accuracy_in_pytorch(finished, fetched):
    torch = pytest.importorskip("torch", reason="python3-torch is needed to load the model")
    reference = load_reference_trainer()
    images, labels = load_test_split(1000)
    for name, path in fetched.items():
        job = finished[name][0]
        art = tern.artifact.read(path)
        a = art.architecture
        model = reference.ResNet(a["arch"], a["in_channels"], a["num_classes"],
                                 a["width_multiplier"])
        model.load_state_dict(art.to_torch_state_dict(), strict=True)
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(art.normalize(images)))
        top1 = (logits.argmax(1).numpy() == labels).mean()
        print(f"{name}: PyTorch top-1 {100 * top1:.2f}%, tern {100 * job.result.ternary_top1:.2f}%")
        assert abs(top1 - job.result.ternary_top1) <= 0.001
        assert art.packing == {"hla": "2bit", "base3": "base3"}[name]
        assert art.bits_per_ternary_weight == pytest.approx(job.result.bits_per_weight, abs=0.1)


# ----------------------------------------------------------------- errors (secure ternd)

def test_bad_spec_names_the_field(alice):
    with pytest.raises(tern.InvalidArgument) as refused:
        alice.submit({"optimization": {"epochs": 0}})
    assert refused.value.field == "spec.optimization.epochs"
    assert refused.value.code == "INVALID_ARGUMENT"
    assert "must be > 0" in refused.value.message
    # The error as data, from grpc-status-details-bin: one violation per field.
    assert refused.value.reason == "SPEC_INVALID"
    assert [v.field for v in refused.value.field_violations] == ["spec.optimization.epochs"]
    assert "must be > 0" in refused.value.field_violations[0].description
    assert refused.value.retry_delay is None
    with pytest.raises(tern.InvalidArgument) as two:
        alice.submit({"optimization": {"epochs": 0}, "model": {"arch": "resnet9000"}})
    fields = {v.field for v in two.value.field_violations}
    assert fields == {"spec.optimization.epochs", "spec.model.arch"}, fields
    with pytest.raises(tern.SpecError) as local:
        alice.submit({"optimization": {"epoch": 3}})
    assert local.value.field == "optimization.epoch"


def test_unknown_job_is_not_found(alice):
    for call in (alice.get, alice.cancel, lambda i: list(alice.watch(i)),
                 lambda i: alice.fetch(i, os.devnull)):
        with pytest.raises(tern.NotFound) as missing:
            call("987654")
        assert missing.value.reason == "JOB_NOT_FOUND"
        assert missing.value.metadata == {"job_id": "987654"}
        assert missing.value.message == "job 987654 not found"


def test_calls_without_a_valid_token_are_unauthenticated(secure_service):
    address, certs, _, _ = secure_service
    ca = os.path.join(certs, "ca.pem")
    with tern.Client(address, tls_ca=ca) as anonymous:
        with pytest.raises(tern.Unauthenticated) as refused:
            list(anonymous.list())
    assert "bearer token" in refused.value.message
    with tern.Client(address, tls_ca=ca, token="x" * 40) as stranger:
        with pytest.raises(tern.Unauthenticated):
            stranger.get("1")
    with pytest.raises(ValueError, match="needs TLS"):
        tern.Client(address, token="x" * 40)


def test_another_users_job_is_not_found_like_an_absent_one(secure_service, alice):
    address, certs, tokens, _ = secure_service
    job = alice.submit(dict(BASE3_JOB, name="alices"))
    with tern.Client(address, tls_ca=os.path.join(certs, "ca.pem"),
                     token_file=tokens["bob"]) as bob:
        assert bob.whoami()["name"] == "bob"
        for call in (bob.get, bob.cancel):
            with pytest.raises(tern.NotFound) as foreign:
                call(job.id)
            with pytest.raises(tern.NotFound) as absent:
                call("987654")
            assert foreign.value.message == f"job {job.id} not found"
            assert "alice" not in foreign.value.message
            assert (foreign.value.reason, absent.value.reason) == ("JOB_NOT_FOUND",) * 2
            assert foreign.value.metadata == {"job_id": job.id}
        with pytest.raises(tern.PermissionDenied) as listing:
            list(bob.list(owner="alice"))
        assert listing.value.reason == "LIST_OTHER_OWNER"
        assert [j.id for j in bob.list()] == []
    alice.cancel(job.id)


def test_client_certificate_identifies_the_caller(secure_service):
    _, certs, _, mtls_address = secure_service
    with tern.Client(mtls_address, tls_ca=os.path.join(certs, "ca.pem"),
                     tls_cert=os.path.join(certs, "client.pem"),
                     tls_key=os.path.join(certs, "client.key")) as client:
        me = client.whoami()
        assert (me["name"], me["proven_by"], me["authenticated"]) == \
            ("client", "client certificate", True)
        job = client.submit(dict(BASE3_JOB, name="by-certificate"))
        assert client.get(job.id).spec.owner == "client"
        client.cancel(job.id)
    with pytest.raises(ValueError, match="give both"):
        tern.Client(mtls_address, tls_cert=os.path.join(certs, "client.pem"))


def test_fetch_of_an_unfinished_job_is_a_failed_precondition(alice, tmp_path):
    job = alice.submit(dict(BASE3_JOB, name="queued"))
    with pytest.raises(tern.FailedPrecondition):
        alice.fetch(job.id, tmp_path)
    assert os.listdir(tmp_path) == []
    alice.cancel(job.id)


def test_same_idempotency_key_makes_one_job(alice):
    first = alice.submit(dict(BASE3_JOB, labels={"case": "idempotent"}), idempotency_key="same-key")
    again = alice.submit(dict(BASE3_JOB, labels={"case": "idempotent"}), idempotency_key="same-key")
    assert first.created and not again.created and first.id == again.id
    assert [j.id for j in alice.list(labels={"case": "idempotent"})] == [first.id]
    with pytest.raises(tern.AlreadyExists) as reused:
        alice.submit(dict(BASE3_JOB, name="other"), idempotency_key="same-key")
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert reused.value.metadata["job_id"] == first.id
    assert [v.field for v in reused.value.field_violations] == ["idempotency_key"]
    alice.cancel(first.id)


class _LostResponse(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection lost after the request was sent"


def test_a_retried_submit_never_starts_a_second_job(alice, monkeypatch):
    # The first SubmitJob reaches ternd but its answer is lost: the client retries with the
    # idempotency key it made, and ternd returns the job of the first call.
    real = alice._stub.SubmitJob
    calls = []

    def lossy(request, **kwargs):
        calls.append(request.idempotency_key)
        response = real(request, **kwargs)
        if len(calls) == 1:
            raise _LostResponse()
        return response

    monkeypatch.setattr(alice._stub, "SubmitJob", lossy)
    job = alice.submit(dict(BASE3_JOB, labels={"case": "retried"}))
    assert len(calls) == 2 and calls[0] == calls[1] == job.idempotency_key
    assert not job.created
    assert [j.id for j in alice.list(labels={"case": "retried"})] == [job.id]
    alice.cancel(job.id)


def test_submit_without_a_key_sends_and_returns_a_random_one(alice):
    job = alice.submit(dict(BASE3_JOB, labels={"case": "random-key"}))
    assert job.idempotency_key.startswith("py-") and len(job.idempotency_key) > 10
    again = alice.submit(dict(BASE3_JOB, labels={"case": "random-key"}))
    assert again.idempotency_key != job.idempotency_key and again.id != job.id
    alice.cancel(job.id)
    alice.cancel(again.id)


def test_channel_carries_the_published_retry_policy():
    import json
    from tern._pb import service_config_json
    with open(os.path.join(ROOT, "proto", "tern", "v1", "service_config.json")) as f:
        published = json.load(f)
    assert json.loads(service_config_json()) == published
    (policy,) = published["methodConfig"]
    assert policy["name"] == [{"service": "tern.v1.JobService"}]
    assert policy["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_details_decode_every_kind():
    from tern._pb import rpc_error_details_pb2 as details_pb2, rpc_status_pb2
    status = rpc_status_pb2.Status(code=8, message="too many streams")
    info = details_pb2.ErrorInfo(reason="WATCH_STREAM_LIMIT", domain="tern.v1",
                                 metadata={"owner": "alice"})
    retry = details_pb2.RetryInfo()
    retry.retry_delay.seconds, retry.retry_delay.nanos = 2, 500000000
    quota = details_pb2.QuotaFailure(violations=[details_pb2.QuotaFailure.Violation(
        subject="owner:alice", description="at most 1 open WatchJob streams per caller")])
    for message in (retry, quota, info):
        status.details.add().Pack(message)

    class _Refused(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.RESOURCE_EXHAUSTED

        def details(self):
            return "too many streams"

        def trailing_metadata(self):
            return (("grpc-status-details-bin", status.SerializeToString()),)

    error = tern.errors.from_rpc_error(_Refused())
    assert isinstance(error, tern.ResourceExhausted)
    assert (error.reason, error.metadata, error.retry_delay) == \
        ("WATCH_STREAM_LIMIT", {"owner": "alice"}, 2.5)
    assert error.quota_violations == [tern.errors.QuotaViolation(
        "owner:alice", "at most 1 open WatchJob streams per caller")]
    assert tern.errors.from_rpc_error(_LostResponse()).reason is None  # no details: no data


def test_list_follows_pages_and_cancel_wait(alice):
    ids = [alice.submit(dict(BASE3_JOB, labels={"case": "pages"})).id for _ in range(5)]
    listed = [j.id for j in alice.list(labels={"case": "pages"}, page_size=2)]
    assert listed == ids[::-1]  # newest first, across three pages
    assert len(list(alice.list(labels={"case": "pages"}, page_size=2, limit=3))) == 3
    assert {j.state for j in alice.list(states=["queued"], labels={"case": "pages"})} == {"QUEUED"}
    with pytest.raises(tern.DeadlineExceeded):
        alice.wait(ids[0], timeout=1, progress=False)
    for job_id in ids:
        assert alice.cancel(job_id, reason="test").state == "CANCELLED"
    assert alice.cancel(ids[0]).state == "CANCELLED"  # again: a no-op
    with pytest.raises(tern.JobFailed) as failed:
        alice.wait(ids[0], timeout=30, progress=False)
    assert failed.value.job.state == "CANCELLED"
    assert alice.wait(ids[0], check=False, progress=False).state == "CANCELLED"


def test_digest_mismatch_leaves_no_file(alice, tmp_path, monkeypatch):
    from tern._pb import job_pb2, job_service_pb2 as pb

    def stream(request, **kwargs):
        yield pb.GetArtifactResponse(header=pb.ArtifactHeader(
            file_name="x.tern", size_bytes=4, sha256=hashlib.sha256(b"good").hexdigest()))
        yield pb.GetArtifactResponse(chunk=pb.ArtifactChunk(offset=0, data=b"evil"))
        yield pb.GetArtifactResponse(result=job_pb2.JobResult())

    monkeypatch.setattr(alice._stub, "GetArtifact", stream)
    with pytest.raises(errors.DigestMismatch, match="SHA-256"):
        alice.fetch("1", tmp_path, progress=False)
    assert os.listdir(tmp_path) == []


def test_an_interrupted_download_resumes_at_its_offset(alice, tmp_path, monkeypatch):
    from tern._pb import job_pb2, job_service_pb2 as pb
    data = bytes(range(256)) * 40
    header = pb.ArtifactHeader(file_name="7.tern", size_bytes=len(data),
                               sha256=hashlib.sha256(data).hexdigest())
    offsets = []

    def stream(request, **kwargs):
        offsets.append(request.offset)
        yield pb.GetArtifactResponse(header=header)
        yield pb.GetArtifactResponse(chunk=pb.ArtifactChunk(
            offset=request.offset, data=data[request.offset:request.offset + 4000]))
        if len(offsets) == 1:
            raise _LostResponse()
        yield pb.GetArtifactResponse(chunk=pb.ArtifactChunk(
            offset=request.offset + 4000, data=data[request.offset + 4000:]))
        yield pb.GetArtifactResponse(result=job_pb2.JobResult())

    monkeypatch.setattr(alice._stub, "GetArtifact", stream)
    path = alice.fetch("7", tmp_path, progress=False)
    assert offsets == [0, 4000] and path == str(tmp_path / "7.tern")
    assert open(path, "rb").read() == data and os.listdir(tmp_path) == ["7.tern"]


def test_wait_times_out_with_a_timeout_error(alice):
    job = alice.submit(dict(BASE3_JOB, name="waits"))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        alice.wait(job.id, timeout=0.5, progress=False)
    assert time.monotonic() - started < 5
    alice.cancel(job.id)


def test_wait_returns_the_finished_job_and_shows_progress(client, jobs, capsys):
    job = client.submit(dict(BASE3_JOB, name="waited", events={"progress_every_steps": 8}))
    assert client.wait(job.id, timeout=240, progress=True).state == "SUCCEEDED"
    shown = capsys.readouterr().err
    assert f"job {job.id}: RUNNING -> SUCCEEDED" in shown and "top-1" in shown
    assert client.wait(job.id, timeout=1, progress=False).state == "SUCCEEDED"  # at once


def test_update_delete_views_and_the_server_version(secure_service, alice):
    from conftest import ternctl_secure
    address, certs, tokens, _ = secure_service
    assert alice.whoami()["server_version"].startswith("0.1.0")
    job = alice.submit(dict(BASE3_JOB, labels={"case": "update"}))
    assert alice.get(job.id).proto.name == f"jobs/{job.id}"
    read = alice.get(job.id)
    updated = alice.update(job.id, name="renamed", labels={"case": "updated", "stage": "two"},
                           etag=read.etag)
    assert updated.spec.name == "renamed" and dict(updated.spec.labels)["stage"] == "two"
    assert updated.etag != read.etag
    # A second change made from the same (now stale) read is refused, as data.
    with pytest.raises(tern.Aborted) as stale:
        alice.update(job.id, labels={"case": "lost"}, etag=read.etag)
    assert stale.value.reason == "ETAG_MISMATCH"
    assert stale.value.metadata == {"job_id": job.id, "etag": updated.etag}
    assert dict(alice.get(job.id).spec.labels)["case"] == "updated"
    assert [j.id for j in alice.list(labels={"case": "updated"})] == [job.id]
    assert list(alice.list(labels={"case": "update"})) == []
    with pytest.raises(ValueError, match="view"):
        list(alice.list(view="everything"))
    assert [j.id for j in alice.list(labels={"case": "updated"}, view="full")] == [job.id]
    with tern.Client(address, tls_ca=os.path.join(certs, "ca.pem"),
                     token_file=tokens["bob"]) as bob:
        # Another owner's job looks absent (NOT_FOUND), for writes too.
        with pytest.raises(tern.NotFound):
            bob.update(job.id, name="bobs")
        with pytest.raises(tern.NotFound):
            bob.delete(job.id)
    # ternctl: update keeps the other labels, delete needs a finished job.
    run = ternctl_secure(secure_service, "alice", "update", job.id, "--label", "stage=three",
                         "--remove-label", "case", "--name", "cli")
    assert run.returncode == 0, run.stderr
    got = alice.get(job.id)
    assert got.spec.name == "cli" and dict(got.spec.labels) == {"stage": "three"}
    with pytest.raises(tern.FailedPrecondition):
        alice.delete(job.id)
    alice.cancel(job.id)
    run = ternctl_secure(secure_service, "alice", "delete", job.id)
    assert run.returncode == 0 and run.stdout == f"{job.id}: deleted\n", run.stderr
    with pytest.raises(tern.NotFound):
        alice.get(job.id)
    with pytest.raises(tern.NotFound):
        alice.delete(job.id)


def test_agents_follows_pages(client):
    deadline = time.monotonic() + 30
    while not client.agents() and time.monotonic() < deadline:  # the agent registers
        time.sleep(0.2)
    agents = client.agents(page_size=1)
    assert len(agents) >= 1
    assert [a["agent_id"] for a in agents] == [a["agent_id"] for a in client.agents()]
    assert [a["agent_id"] for a in agents] == sorted(a["agent_id"] for a in agents)
