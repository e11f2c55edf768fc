"""Client: ternd's tern.v1.JobService for Python programs and notebooks.

    client = Client("127.0.0.1:7070")                      # or $TERN_SERVER
    client = Client("ternd-0:7070,ternd-1:7070")           # several ternd: follows the leader
    job = client.submit("job.yaml")                        # retried submits make one job
    for event in client.watch(job.id):                     # resumes after a dropped stream
        print(event)
    job = client.wait(job.id, timeout=3600)                # raises JobFailed unless SUCCEEDED
    client.fetch(job.id, "model.tern")                     # SHA-256 checked, atomic

Security as ternctl's flags: `tls=True` trusts the system's CAs, `tls_ca` a PEM
bundle, `tls_cert`/`tls_key` a client certificate, `token`/`token_file` a bearer token
(needs TLS), `owner` the x-tern-owner claim of a ternd without authentication. Unset
arguments come from the environment ternctl reads: TERN_SERVER, TERN_OWNER, TERN_TLS,
TERN_TLS_CA, TERN_TLS_CERT, TERN_TLS_KEY, TERN_TOKEN_FILE.

`address` may list several ternd sharing one store ("a:7070,b:7070" or a list): calls go
to the leader, following a standby's NOT_LEADER answer to the leader it names when that is
one of the given addresses, else to the next address, and past an unreachable ternd to the
next (tern/_failover.py; as ternctl --server A,B). A call refused by a standby never ran, so
it is retried on the leader within its deadline whatever the method.

Every unary call has a deadline (`timeout`, default 10 s); UNAVAILABLE is retried
where that is safe: reads, cancel, and submit, which always carries an idempotency key (a
random one unless given; Job.idempotency_key returns it). The channel retries it first, by
the service config of proto/tern/v1/service_config.json (job_service.proto, "Retries"),
then this client up to 4 times over about 2 s. Failures raise tern.errors exceptions,
which carry the error as data (reason, metadata, field_violations, retry_delay). A Client is thread-safe
(one gRPC channel); close() or a `with` block releases it.
"""

import hashlib
import os
import sys
import tempfile
import time
import uuid

import grpc
from google.protobuf import field_mask_pb2, json_format

from tern import _failover, errors, spec as spec_module
from tern._pb import job_pb2, job_service_pb2 as service_pb2, job_service_pb2_grpc as service_grpc
from tern._pb import service_config_json
from tern.events import TERMINAL_STATES, Job, StateChanged, event_from_proto

DEFAULT_ADDRESS = "127.0.0.1:7070"
_RETRIES = 4
_FETCH_TIMEOUT = 30 * 60  # seconds, as ternctl's fetch
# Codes on which a broken WatchJob stream is resumed (as ternctl watch does).
_STREAM_RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def _env_flag(name):
    return os.environ.get(name, "").lower() not in ("", "0", "false", "no", "off")


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{what}: cannot read {path}: {e.strerror}") from None


def _token_from_file(path):
    token = _read(path, "token_file").decode("utf-8", "replace").strip()
    if not 16 <= len(token) <= 512 or any(c.isspace() or not c.isprintable() for c in token):
        raise ValueError(f"token_file: {path} must hold one token of 16..512 printable "
                         "characters without spaces")
    return token


def _job_view(view):
    """JobView's number for "basic" / "full" (or JOB_VIEW_* names)."""
    try:
        return spec_module.parse_enum(service_pb2.JobView.DESCRIPTOR, view)
    except ValueError as e:
        raise ValueError(f"view: {e}") from None


def _check_idempotency_key(key):
    if not 1 <= len(key) <= 128 or any(not (32 <= ord(c) < 127) for c in key):
        raise ValueError(f"idempotency_key: 1..128 printable ASCII characters, got {key!r}")


class Client:
    """A connection to ternd's JobService (see the module's documentation)."""

    def __init__(self, address=None, *, token=None, token_file=None, tls=None, tls_ca=None,
                 tls_cert=None, tls_key=None, tls_server_name=None, owner=None, timeout=10.0):
        self.addresses = _failover.parse_addresses(
            address or os.environ.get("TERN_SERVER") or DEFAULT_ADDRESS)
        self.timeout = timeout
        tls_ca = tls_ca or os.environ.get("TERN_TLS_CA")
        tls_cert = tls_cert or os.environ.get("TERN_TLS_CERT")
        tls_key = tls_key or os.environ.get("TERN_TLS_KEY")
        token_file = token_file or (None if token else os.environ.get("TERN_TOKEN_FILE"))
        if tls is None:
            tls = _env_flag("TERN_TLS") or bool(tls_ca or tls_cert)
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("tls_cert and tls_key: give both or neither")
        if token is not None and token_file is not None:
            raise ValueError("token and token_file: give one")
        if token_file is not None:
            token = _token_from_file(token_file)
        if token is not None and not tls:
            raise ValueError("a bearer token needs TLS (tls=True or tls_ca=...): it would travel "
                             "in plain text")
        owner = owner if owner is not None else os.environ.get("TERN_OWNER", "")
        self._metadata = (("x-tern-owner", owner),) if owner else ()
        # Reconnect soon after ternd restarts (gRPC's default first backoff is 1 s).
        options = [("grpc.max_receive_message_length", 16 << 20),
                   ("grpc.initial_reconnect_backoff_ms", 250),
                   ("grpc.max_reconnect_backoff_ms", 5000)]
        # With several ternd the channel's own retries would retry a standby's
        # NOT_LEADER on that standby: the ServerList retries instead.
        if len(self.addresses) == 1:
            options += [("grpc.enable_retries", 1),
                        ("grpc.service_config", service_config_json())]
        else:
            options += [("grpc.enable_retries", 0)]
        creds = None
        if tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca, "tls_ca") if tls_ca else None,
                private_key=_read(tls_key, "tls_key") if tls_key else None,
                certificate_chain=_read(tls_cert, "tls_cert") if tls_cert else None)
            if token is not None:
                creds = grpc.composite_channel_credentials(
                    creds, grpc.access_token_call_credentials(token))
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
        self._channels = []

        def make_stub(target):
            channel = (grpc.secure_channel(target, creds, options) if creds is not None
                       else grpc.insecure_channel(target, options))
            self._channels.append(channel)
            return service_grpc.JobServiceStub(channel)

        self._servers = _failover.ServerList(self.addresses, make_stub)
        self._channel = self._channels[0]

    @property
    def address(self):
        """The address calls go to now (the leader, as far as the client knows)."""
        return self.addresses[self._servers.current()[0]]

    @property
    def _stub(self):
        return self._servers.current()[1]

    # ------------------------------------------------------------------ lifecycle

    def close(self):
        for channel in self._channels:
            channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ calls

    def _call(self, method, request, retry=True, timeout=None):
        """A unary call (`method`: its name, "GetJob") with a deadline; UNAVAILABLE retried
        when `retry`, and a standby's NOT_LEADER always, on the leader (_failover)."""
        tries = _RETRIES if retry else 1
        attempt = 0
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            index, stub = self._servers.current()
            try:
                result = getattr(stub, method)(request, timeout=timeout or self.timeout,
                                               metadata=self._metadata)
                self._servers.on_success(index)
                return result
            except grpc.RpcError as e:
                wait = self._servers.on_failure(index, e)
                if wait is not None:
                    not_leader, _ = _failover.leader_hint(e)
                    if (retry or not_leader) and time.monotonic() + wait < deadline:
                        time.sleep(wait)
                        continue
                    raise errors.from_rpc_error(e) from None
                attempt += 1
                if e.code() == grpc.StatusCode.UNAVAILABLE and attempt < tries:
                    time.sleep(0.25 * 2 ** (attempt - 1))  # 0.25, 0.5, 1 s
                    continue
                raise errors.from_rpc_error(e) from None

    def submit(self, spec, idempotency_key=None, *, timeout=None):
        """Submits a job and returns it (a Job; `.created` is False when an earlier call with
        the same key made it, `.idempotency_key` the key sent).

        `spec`: a dict, a tern.v1.JobSpec, or the path of a YAML/JSON job file (tern.spec).
        Without `idempotency_key` a random one is made, so the retries of this call never
        start a second job; pass your own to make retries across processes safe. Raises
        SpecError naming the field for a spec refused here, InvalidArgument naming it for
        one ternd refuses (`.field`: "spec.optimization.epochs"), AlreadyExists when the key
        was used with another spec."""
        job_spec = spec_module.load(spec)
        key = idempotency_key if idempotency_key is not None else f"py-{uuid.uuid4()}"
        _check_idempotency_key(key)
        request = service_pb2.SubmitJobRequest(spec=job_spec, idempotency_key=key)
        response = self._call("SubmitJob", request, timeout=timeout)
        return Job(response.job, created=response.created, idempotency_key=key)

    def get(self, job_id, *, view="full", timeout=None):
        """The job (a Job). NotFound when ternd has no such job.

        `view`: "full" (every field) or "basic" (without result.layers; JobView)."""
        request = service_pb2.GetJobRequest(job_id=job_id, view=_job_view(view))
        return Job(self._call("GetJob", request, timeout=timeout))

    def list(self, states=(), owner="", labels=None, *, page_size=0, limit=None, view="basic",
             timeout=None):
        """Jobs newest first, following pages as it is iterated (a generator of Job).

        `states`: names as ternctl takes them ("running", "JOB_STATE_QUEUED", ...);
        `labels`: {key: value} every listed job carries; `limit`: at most this many;
        `view`: "basic" (ternd's default for lists: no per-layer statistics, result.layers)
        or "full"."""
        if isinstance(states, str):
            states = [states]
        try:
            numbers = [spec_module.parse_enum(job_pb2.JobState.DESCRIPTOR, s) for s in states]
        except ValueError as e:
            raise ValueError(f"states: {e}") from None
        request = service_pb2.ListJobsRequest(states=numbers, owner=owner, labels=labels or {},
                                              page_size=page_size, view=_job_view(view))
        count = 0
        while True:
            response = self._call("ListJobs", request, timeout=timeout)
            for proto in response.jobs:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield Job(proto)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def cancel(self, job_id, reason="", *, timeout=None):
        """Requests cancellation; returns the job. FailedPrecondition for a finished job."""
        request = service_pb2.CancelJobRequest(job_id=job_id, reason=reason)
        return Job(self._call("CancelJob", request, timeout=timeout))

    def update(self, job_id, *, name=None, labels=None, etag=None, timeout=None):
        """Changes a job's name and/or replaces its labels (the only fields that change after
        submission; UpdateJob) and returns the job. `labels`: the whole new {key: value} map
        ({} removes every label). InvalidArgument naming the field for a bad name or label.
        `etag`: the Job.etag of the read the change was made from; if an update came between,
        nothing changes and Aborted (reason "ETAG_MISMATCH") is raised: read and reapply."""
        job = job_pb2.Job(id=job_id, etag=etag or "")
        paths = []
        if name is not None:
            job.spec.name = name
            paths.append("spec.name")
        if labels is not None:
            job.spec.labels.update(labels)
            paths.append("spec.labels")
        if not paths:
            raise ValueError("update: give name= or labels=")
        request = service_pb2.UpdateJobRequest(
            job=job, update_mask=field_mask_pb2.FieldMask(paths=paths))
        return Job(self._call("UpdateJob", request, timeout=timeout))

    def delete(self, job_id, *, timeout=None):
        """Deletes a SUCCEEDED, FAILED or CANCELLED job with its history, artifact and
        checkpoints (DeleteJob). FailedPrecondition for a job that has not ended, NotFound
        afterwards. Not retried (a retry after a lost answer would say NotFound)."""
        self._call("DeleteJob", service_pb2.DeleteJobRequest(job_id=job_id),
                   retry=False, timeout=timeout)

    def whoami(self, *, timeout=None):
        """Who ternd takes this client to be: {"name", "proven_by", "authenticated",
        "sees_every_job", "quota", "server_version"} (WhoAmIResponse as a dict)."""
        response = self._call("WhoAmI", service_pb2.WhoAmIRequest(), timeout=timeout)
        return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                         including_default_value_fields=True)

    def agents(self, *, page_size=0, timeout=None):
        """The node agents ternd knows, by agent_id, every page (ListAgentsResponse.agents
        as dicts). `page_size`: agents per call (0: ternd's default)."""
        request = service_pb2.ListAgentsRequest(page_size=page_size)
        agents = []
        while True:
            response = self._call("ListAgents", request, timeout=timeout)
            agents += [json_format.MessageToDict(a, preserving_proto_field_name=True)
                       for a in response.agents]
            if not response.next_page_token:
                return agents
            request.page_token = response.next_page_token

    def watch(self, job_id, from_seq=1, *, include_logs=False, reconnect_for=60.0, timeout=None):
        """The job's events (typed tern.events), from sequence `from_seq` on, until the job
        ends. A broken stream is resumed after the last event seen, so no event is missed
        or repeated; it gives up (raising the stream's error) after `reconnect_for` seconds
        without an event. `timeout`: overall seconds (DeadlineExceeded after). Stopping the
        iteration early closes the stream."""
        deadline = None if timeout is None else time.monotonic() + timeout
        next_seq = max(int(from_seq), 1)
        last_progress = time.monotonic()
        backoff = 0.25
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise errors.DeadlineExceeded(f"watch {job_id}: no end within {timeout} s")
            request = service_pb2.WatchJobRequest(job_id=job_id, from_sequence=next_seq,
                                                  include_logs=include_logs)
            index, stub = self._servers.current()
            stream = stub.WatchJob(request, timeout=remaining, metadata=self._metadata)
            ended = False
            error = None
            try:
                for proto in stream:
                    if proto.sequence < next_seq:
                        continue  # already delivered before the stream broke
                    next_seq = proto.sequence + 1
                    last_progress = time.monotonic()
                    backoff = 0.25
                    self._servers.on_success(index)
                    event = event_from_proto(proto)
                    yield event
                    if isinstance(event, StateChanged) and event.terminal:
                        ended = True
                    if ended and event.kind == "finished":
                        return
                if ended:
                    return
            except grpc.RpcError as e:
                error = e
            finally:
                stream.cancel()
            wait = None if error is None else self._servers.on_failure(index, error)
            if error is None:
                # Ended without a terminal state (ternd shutting down): ask, then resume.
                if self.get(job_id).terminal:
                    return
            elif error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None \
                    and time.monotonic() >= deadline:
                raise errors.DeadlineExceeded(f"watch {job_id}: no end within {timeout} s")
            elif error.code() not in _STREAM_RETRY:
                raise errors.from_rpc_error(error) from None
            if time.monotonic() - last_progress > reconnect_for:
                if error is None:
                    raise errors.Unavailable(f"watch {job_id}: the stream keeps ending")
                raise errors.from_rpc_error(error) from None
            if wait is not None:  # another ternd leads: resume there
                time.sleep(wait)
                continue
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def wait(self, job_id, timeout=None, *, check=True, progress=None):
        """Blocks until the job ends and returns it (a Job). Raises JobFailed when it ended
        FAILED or CANCELLED (unless check=False), DeadlineExceeded (a TimeoutError) after
        `timeout` seconds. `progress`: a bar (tqdm when installed, else a line per epoch on
        stderr); None shows one when stderr is a terminal."""
        show = sys.stderr.isatty() if progress is None else progress
        job = self.get(job_id)
        if not job.terminal:
            display = _Progress(job_id) if show else None
            try:
                for event in self.watch(job_id, timeout=timeout):
                    if display:
                        display.update(event)
            finally:
                if display:
                    display.close()
            job = self.get(job_id)
        if check and job.state in TERMINAL_STATES and not job.succeeded:
            raise errors.JobFailed(job)
        return job

    def fetch(self, job_id, path=None, *, progress=None, timeout=_FETCH_TIMEOUT):
        """Downloads a SUCCEEDED job's .tern artifact and returns the path written.

        `path`: a file, a directory (the server's file name inside it) or None (that name
        here). The bytes are checked against the SHA-256 and size ternd announces and the
        file appears atomically (a temporary file in the same directory, fsynced, renamed):
        DigestMismatch leaves nothing behind. An interrupted download resumes at its offset.
        FailedPrecondition unless the job SUCCEEDED."""
        show = sys.stderr.isatty() if progress is None else progress
        download = _Download(job_id, path, show)
        tries = 0
        try:
            while True:
                request = service_pb2.GetArtifactRequest(job_id=job_id, offset=download.written)
                index, stub = self._servers.current()
                try:
                    for message in stub.GetArtifact(request, timeout=timeout,
                                                    metadata=self._metadata):
                        download.receive(message)
                    return download.finish()
                except grpc.RpcError as e:
                    wait = self._servers.on_failure(index, e)
                    if wait is not None and _failover.leader_hint(e)[0] and tries < 4 * _RETRIES:
                        tries += 1
                        time.sleep(wait)  # refused by a standby: nothing was sent yet
                        continue
                    tries += 1
                    if e.code() != grpc.StatusCode.UNAVAILABLE or tries >= _RETRIES \
                            or download.header is None:
                        raise errors.from_rpc_error(e) from None
                    time.sleep(0.2 * 2 ** tries)  # then resume at download.written
        finally:
            download.close()


class _Download:
    """One artifact download: a temporary file beside the destination, the running
    SHA-256, and the checks of Client.fetch. close() removes what finish() did not keep."""

    def __init__(self, job_id, path, show_progress):
        self.job_id, self.path, self.show_progress = job_id, path, show_progress
        self.header, self.dest, self.tmp, self.bar = None, None, None, None
        self.digest, self.written = hashlib.sha256(), 0

    def receive(self, message):
        kind = message.WhichOneof("kind")
        if kind == "header":
            self._header(message.header)
        elif kind == "chunk":
            self._chunk(message.chunk)

    def _header(self, header):
        if self.header is not None:  # a resumed stream announces the same artifact
            if (header.sha256, header.size_bytes) != (self.header.sha256, self.header.size_bytes):
                raise errors.DigestMismatch(
                    f"fetch {self.job_id}: the artifact changed during the download")
            return
        self.header = header
        self.dest = _destination(self.path, header.file_name, self.job_id)
        self.tmp = tempfile.NamedTemporaryFile(
            dir=os.path.dirname(self.dest) or ".", delete=False,
            prefix=os.path.basename(self.dest) + ".", suffix=".part")
        self.bar = _bar(header.size_bytes, self.dest) if self.show_progress else None

    def _chunk(self, chunk):
        if self.tmp is None or chunk.offset != self.written:
            raise errors.DigestMismatch(f"fetch {self.job_id}: a chunk at offset {chunk.offset}, "
                                        f"expected {self.written}")
        self.tmp.write(chunk.data)
        self.digest.update(chunk.data)
        self.written += len(chunk.data)
        if self.bar:
            self.bar.update(len(chunk.data))

    def finish(self):
        """Checks size and digest, then fsyncs and renames into place; returns the path."""
        if self.header is None:
            raise errors.TernError(f"fetch {self.job_id}: the stream sent no header")
        got = self.digest.hexdigest()
        if self.written != self.header.size_bytes or got != self.header.sha256:
            raise errors.DigestMismatch(
                f"fetch {self.job_id}: got {self.written} bytes with SHA-256 {got}, ternd "
                f"announced {self.header.size_bytes} bytes with SHA-256 {self.header.sha256}")
        self.tmp.flush()
        os.fsync(self.tmp.fileno())
        self.tmp.close()
        os.chmod(self.tmp.name, 0o644)
        os.replace(self.tmp.name, self.dest)
        self.tmp = None
        _fsync_dir(os.path.dirname(self.dest) or ".")
        return self.dest

    def close(self):
        if self.bar:
            self.bar.close()
        if self.tmp is not None:
            self.tmp.close()
            os.unlink(self.tmp.name)
            self.tmp = None


def _destination(path, file_name, job_id):
    name = os.path.basename(file_name) or f"{job_id}.tern"
    if path is None:
        return name
    path = os.fspath(path)
    return os.path.join(path, name) if os.path.isdir(path) else path


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _bar(total, desc):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(desc))


class _Progress:
    """Client.wait's display: a tqdm bar over optimizer steps, or lines on stderr."""

    def __init__(self, job_id):
        self.job_id = job_id
        self.bar = None
        try:
            from tqdm.auto import tqdm
            self.tqdm = tqdm
        except ImportError:
            self.tqdm = None

    def update(self, event):
        if event.kind == "progress":
            p = event.data
            if self.tqdm is None:
                return
            if self.bar is None:
                self.bar = self.tqdm(total=p.total_steps, desc=f"job {self.job_id}", unit="step")
            self.bar.n = p.step
            self.bar.set_postfix(epoch=f"{p.epoch}/{p.epochs}", loss=f"{p.loss:.4f}", refresh=True)
        elif event.kind in ("epoch_end", "state_change", "finished"):
            line = f"job {self.job_id}: {event._describe()}"
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()
