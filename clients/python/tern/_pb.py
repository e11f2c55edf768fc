"""The tern.v1 modules generated from proto/ when the package is built."""

try:
    from tern.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "tern: the generated tern.v1 modules are missing (" + str(e) + "): install the package "
        "(pip install ./clients/python), or build tern with CMake and add "
        "<build>/clients/python/gen to PYTHONPATH") from e


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
