"""Fixtures of the Python client's tests: a real ternd + tern-agent + tern-trainer on
loopback (as tests/e2e/lib.sh starts them), a second ternd with TLS and bearer tokens
and no agent (its jobs stay queued), and the small jobs both use.

$TERN_BUILD_DIR names the build directory (ctest sets it; tests/clients/CMakeLists.txt).
"""

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
BUILD = os.environ.get("TERN_BUILD_DIR", os.path.join(ROOT, "build"))
TESTDATA = os.path.join(HERE, "testdata")
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
BINARIES = {"ternd": "server/ternd", "agent": "worker/agent/tern-agent",
            "trainer": "worker/trainer/tern-trainer", "ternctl": "cli/ternctl"}

def pytest_configure(config):
    """Skips the whole run (exit 77, ctest's SKIP_RETURN_CODE) without the generated
    tern.v1 modules, saying why."""
    try:
        import tern._pb  # noqa: F401
    except ImportError as e:
        if "tern.v1" not in str(e):
            raise
        pytest.exit(f"SKIP: {e} (clients/CMakeLists.txt generates them when protoc and "
                    "grpc_python_plugin are installed)", returncode=77)


def binary(name):
    path = os.path.join(BUILD, BINARIES[name])
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not built (TERN_BUILD_DIR={BUILD})")
    return path


def free_port():
    """A free port below the ephemeral range (tests/e2e/lib.sh free_port)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for _ in range(1000):
        port = random.randrange(20000, max(20001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in [20000, {low})")


class Process:
    """A child process whose stdout goes to `out` and stderr to `log` in `work`."""

    def __init__(self, name, args, work):
        self.name = name
        self.out = os.path.join(work, name + ".out")
        self.log = os.path.join(work, name + ".log")
        with open(self.out, "wb") as out, open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=out, stderr=log, cwd=work)

    def wait_for_address(self, pattern):
        """HOST:PORT from the first stdout line containing `pattern`."""
        for _ in range(600):
            with open(self.out) as f:
                for line in f:
                    if pattern in line:
                        return next(w for w in line.split() if w.startswith("127.0.0.1:"))
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not print '{pattern}': {self.tail()}")

    def tail(self):
        text = ""
        for path in (self.out, self.log):
            with open(path, errors="replace") as f:
                text += f"\n--- {path}\n" + "".join(f.readlines()[-30:])
        return text

    def stop(self):
        """SIGTERM; it must exit 0 within 10 s (as lib.sh checks). Returns a complaint or None."""
        if self.proc.poll() is not None:
            return f"{self.name} exited early with {self.proc.returncode}: {self.tail()}"
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return f"{self.name} did not exit within 10 s of SIGTERM"
        return None if rc == 0 else f"{self.name} exited {rc} after SIGTERM: {self.tail()}"


def start_ternd(work, name, started, extra=()):
    """Starts a ternd (appended to `started`) and returns its gRPC address."""
    rdv = free_port()
    ternd = Process(name, [binary("ternd"), "--listen", "127.0.0.1:0",
                           "--db", os.path.join(work, name + ".db"), "--metrics-listen", "",
                           "--rendezvous-port-min", str(rdv), "--rendezvous-port-max", str(rdv),
                           "--artifact-root", os.path.join(work, name + "-artifacts"),
                           "--checkpoint-root", os.path.join(work, name + "-checkpoints"),
                           *extra], work)
    started.append(ternd)
    return ternd.wait_for_address("listening on")


@contextlib.contextmanager
def running():
    """A list for the processes a fixture starts; all are stopped when the block ends, in
    list order. A clean end fails unless each exited 0 on SIGTERM (as lib.sh checks)."""
    processes = []
    try:
        yield processes
    except BaseException:
        for p in processes:
            p.stop()
        raise
    complaints = [c for c in (p.stop() for p in processes) if c]
    if complaints:
        pytest.fail("; ".join(complaints))


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """ternd and one tern-agent with 2 CPU slots: the address of ternd."""
    work = str(tmp_path_factory.mktemp("service"))
    with running() as started:
        address = start_ternd(work, "ternd", started)
        agent = Process("agent", [binary("agent"), "--server", address, "--cpu-slots", "2",
                                  "--trainer", binary("trainer"),
                                  "--workdir", os.path.join(work, "agent"),
                                  "--metrics-listen", "127.0.0.1:0"], work)
        started.insert(0, agent)  # stopped first: it stops its trainers
        agent.wait_for_address("metrics on")
        yield address


@pytest.fixture(scope="session")
def secure_service(tmp_path_factory):
    """Two ternds without agents: one over TLS with bearer tokens, one requiring client
    certificates (mutual TLS; tests/auth/make_test_certs.sh): (token ternd's address,
    certificate directory, {name: token file}, mutual-TLS ternd's address). Tokens come
    from `ternctl token new`; alice and bob are users, ops an admin."""
    work = str(tmp_path_factory.mktemp("secure"))
    certs = os.path.join(work, "certs")
    subprocess.run(["bash", os.path.join(ROOT, "tests/auth/make_test_certs.sh"), certs],
                   check=True, capture_output=True)
    tokens_path = os.path.join(work, "tokens")
    tokens = {}
    fd = os.open(tokens_path, os.O_WRONLY | os.O_CREAT, 0o600)  # ternd refuses g/o-writable
    with os.fdopen(fd, "w") as lines:
        for name, role in (("alice", []), ("bob", []), ("ops", ["--admin"])):
            tokens[name] = os.path.join(work, name + ".token")
            run = subprocess.run([binary("ternctl"), "token", "new", name, *role,
                                  "-o", tokens[name]], check=True, capture_output=True, text=True)
            lines.write(run.stdout)
    tls = ["--tls-cert", os.path.join(certs, "server.pem"),
           "--tls-key", os.path.join(certs, "server.key")]
    with running() as started:
        address = start_ternd(work, "secure-ternd", started, tls + ["--token-file", tokens_path])
        mtls_address = start_ternd(work, "mtls-ternd", started,
                                   tls + ["--tls-client-ca", os.path.join(certs, "ca.pem")])
        yield address, certs, tokens, mtls_address


@pytest.fixture(scope="session")
def alice(secure_service):
    """A Client of the secure ternd holding alice's token."""
    from tern import Client
    address, certs, tokens, _ = secure_service
    with Client(address, tls_ca=os.path.join(certs, "ca.pem"), token_file=tokens["alice"]) as c:
        yield c


def ternctl_secure(secure_service, who, *args):
    """ternctl against the secure ternd as `who`: the CompletedProcess (text)."""
    address, certs, tokens, _ = secure_service
    return subprocess.run([binary("ternctl"), "--server", address,
                           "--tls-ca", os.path.join(certs, "ca.pem"),
                           "--token-file", tokens[who], *args], capture_output=True, text=True)


# The two small jobs of the real service: a 2-bit, per-channel HLA job from the job file
# ternctl's tests also read, and a base-3, per-tensor TWN job as a dict. 2048 images, one
# epoch each, both at once on the agent's 2 slots; a progress event every 2 steps keeps
# live events coming while the dropped-stream test watches.
SMALL_JOB_FILE = os.path.join(TESTDATA, "small_job.yaml")
BASE3_JOB = {
    "name": "py-base3",
    "labels": {"suite": "python-client"},
    "model": {"arch": "resnet20", "width_multiplier": 0.25},
    "dataset": {"kind": "idx", "path": FASHION_MNIST, "max_train_examples": 2048,
                "max_eval_examples": 1000},
    "quantization": {"method": "twn", "packing": "base3"},
    "optimization": {"epochs": 1, "batch_size": 64, "lr": 0.1},
    "resources": {"ranks": 1, "device_kind": "cpu"},
    "events": {"progress_every_steps": 2},
}


@pytest.fixture(scope="session")
def client(service):
    from tern import Client
    with Client(service, owner="pytest") as c:
        yield c


@pytest.fixture(scope="session")
def jobs(client):
    """{"hla": Job, "base3": Job}: both submitted (and running) at the start."""
    return {"hla": client.submit(SMALL_JOB_FILE), "base3": client.submit(BASE3_JOB)}


@pytest.fixture(scope="session")
def dropped_watch(service, jobs):
    """The base-3 job watched live through a proxy that breaks the connection after the
    third event: (its events, the connections the proxy accepted)."""
    from tern import Client
    proxy = DroppingProxy(service)
    seen = []
    try:
        with Client(proxy.address, owner="pytest") as through_proxy:
            for event in through_proxy.watch(jobs["base3"].id, timeout=240):
                seen.append(event)
                if len(seen) == 3:
                    proxy.drop()
        return seen, proxy.accepted
    finally:
        proxy.close()


@pytest.fixture(scope="session")
def finished(client, jobs, dropped_watch):
    """{name: (Job, [events])} once each job has ended (watched from sequence 1)."""
    out = {}
    for name, job in jobs.items():
        events = list(client.watch(job.id, timeout=240))
        out[name] = (client.get(job.id), events)
    return out


@pytest.fixture(scope="session")
def fetched(client, finished, tmp_path_factory):
    """{name: path of the fetched .tern} of the finished jobs."""
    directory = str(tmp_path_factory.mktemp("fetched"))
    return {name: client.fetch(job.id, directory, progress=False)
            for name, (job, _) in finished.items()}


class DroppingProxy:
    """A TCP proxy to ternd whose open connections drop() closes (a broken network)."""

    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.accepted = 0
        self.sockets = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.accepted += 1
                self.sockets += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop(self):
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.sockets = []

    def close(self):
        self.drop()
        self.listener.close()


def load_reference_trainer():
    """bench/reference/reference_trainer.py as a module (its ResNet, its IDX reader)."""
    sys.path.insert(0, os.path.join(ROOT, "bench", "reference"))
    try:
        import reference_trainer
    finally:
        sys.path.pop(0)
    return reference_trainer
