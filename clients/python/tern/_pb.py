"""The tern.v1 modules generated from proto/ when the package is built."""

import os

try:
    from tern.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "tern: the generated tern.v1 modules are missing (" + str(e) + "): install the package "
        "(pip install ./clients/python), or build tern with CMake and add "
        "<build>/clients/python/gen to PYTHONPATH") from e

try:  # googleapis-common-protos, where installed, owns the google/rpc descriptors
    from google.rpc import error_details_pb2 as rpc_error_details_pb2  # noqa: F401
    from google.rpc import status_pb2 as rpc_status_pb2  # noqa: F401
except ImportError:
    from tern.v1 import google_rpc_error_details_pb2 as rpc_error_details_pb2  # noqa: F401
    from tern.v1 import google_rpc_status_pb2 as rpc_status_pb2  # noqa: F401


def service_config_json():
    """The gRPC service config (retry policy) of tern.v1 channels, as generated next to the
    modules from proto/tern/v1/service_config.json."""
    path = os.path.join(os.path.dirname(job_pb2.__file__), "service_config.json")
    with open(path, encoding="utf-8") as f:
        return f.read()


def enum_name(enum_type, value, prefix=None):
    """The name of `value` in `enum_type` without `prefix`; a value this client does
    not know (a newer server's) becomes "UNKNOWN_<number>" instead of an error."""
    try:
        name = enum_type.Name(value)
    except ValueError:
        return f"UNKNOWN_{value}"
    if prefix and name.startswith(prefix):
        return name[len(prefix):]
    return name
