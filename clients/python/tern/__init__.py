"""tern: the Python client of ternd's tern.v1 JobService, and a reader of .tern artifacts.

    import tern
    client = tern.Client("127.0.0.1:7070")
    job = client.submit("job.yaml")           # the job files ternctl takes
    for event in client.watch(job.id):        # typed events, resumed after a dropped stream
        print(event)
    client.fetch(job.id, "model.tern")        # digest verified, written atomically
    model = tern.artifact.read("model.tern")  # pure Python + NumPy

`tern.artifact` needs only NumPy; the client needs grpcio and protobuf and the
tern.v1 modules generated from proto/ when the package is built (see README.md).
"""

# The generated tern.v1 modules may live in another directory of the same
# package name (CMake's build tree): let `tern.v1` be found there too.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"

_CLIENT_NAMES = ("Client", "Job", "Page")
_EVENT_NAMES = ("Event", "StateChanged", "ProgressEvent", "EpochEnded", "CheckpointCommitted",
                "AttemptStarted", "TrainerFinished", "Finished", "LogLine", "UnknownEvent")
_ERROR_NAMES = ("TernError", "InvalidArgument", "SpecError", "NotFound", "AlreadyExists",
                "FailedPrecondition", "PermissionDenied", "Unauthenticated",
                "ResourceExhausted", "Aborted", "Unavailable", "DeadlineExceeded",
                "DigestMismatch", "JobFailed")


def __getattr__(name):
    # Lazily, so that `import tern.artifact` needs neither grpc nor protobuf.
    import importlib
    if name in _CLIENT_NAMES:
        return getattr(importlib.import_module("tern.client"), name)
    if name in _EVENT_NAMES:
        return getattr(importlib.import_module("tern.events"), name)
    if name in _ERROR_NAMES:
        return getattr(importlib.import_module("tern.errors"), name)
    if name in ("artifact", "client", "errors", "events", "spec"):
        return importlib.import_module("tern." + name)
    raise AttributeError(f"module 'tern' has no attribute {name!r}")


__all__ = list(_CLIENT_NAMES + _EVENT_NAMES + _ERROR_NAMES) + ["artifact"]
