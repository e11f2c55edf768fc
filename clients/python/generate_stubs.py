#!/usr/bin/env python3
"""Generates the Python modules of the tern.v1 API from proto/ (never committed).

    generate_stubs.py --proto-dir PROTO --out DIR

writes DIR/tern/v1/{job_pb2,job_service_pb2,job_service_pb2_grpc}.py, the
package `tern.v1` that `tern` (clients/python/tern) imports, plus
google_rpc_status_pb2.py and google_rpc_error_details_pb2.py (google.rpc's
Status and error details from proto/google/rpc, which Debian does not package
for Python; kept inside tern.v1 so they never clash with googleapis-common-protos'
`google.rpc`) and service_config.json (the channel's retry policy), and
DIR/google/api/field_behavior_pb2.py, which job_pb2 imports (tern's copy of
googleapis' annotation; the same module googleapis-common-protos ships, which
takes its place where it is installed first on the path). Used by CMake (into
the build tree) and by setup.py (into the wheel).

Compilers, in this order: `protoc` with `grpc_python_plugin` (Debian's
protobuf-compiler and protobuf-compiler-grpc), or grpcio-tools' bundled protoc
when it understands proto3 `optional` (Debian's python3-grpc-tools bundles
protoc 3.5, which does not, and is refused with a message saying so).
$PROTOC and $GRPC_PYTHON_PLUGIN override the programs looked up on PATH.
"""

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

# The public API: the job model and JobService (WorkerService is ternd's and
# the agents' business).
PROTO_FILES = ("google/api/field_behavior.proto", "tern/v1/job.proto",
               "tern/v1/job_service.proto")
# Generated module -> where it goes under the output directory.
OUTPUTS = {"tern/v1/job_pb2.py": "tern/v1/job_pb2.py",
           "tern/v1/job_service_pb2.py": "tern/v1/job_service_pb2.py",
           "tern/v1/job_service_pb2_grpc.py": "tern/v1/job_service_pb2_grpc.py",
           "google/api/field_behavior_pb2.py": "google/api/field_behavior_pb2.py"}
# google.rpc messages (no services), renamed into tern/v1.
RPC_PROTO_FILES = ("google/rpc/status.proto", "google/rpc/error_details.proto")
RPC_OUTPUTS = {"google/rpc/status_pb2.py": "tern/v1/google_rpc_status_pb2.py",
               "google/rpc/error_details_pb2.py": "tern/v1/google_rpc_error_details_pb2.py"}
SERVICE_CONFIG = "tern/v1/service_config.json"


class StubError(RuntimeError):
    pass


def _protoc_command():
    """The protoc command line prefix (with the gRPC plugin) to use."""
    protoc = os.environ.get("PROTOC") or shutil.which("protoc")
    plugin = os.environ.get("GRPC_PYTHON_PLUGIN") or shutil.which("grpc_python_plugin")
    if protoc and plugin:
        return [protoc, "--plugin=protoc-gen-grpc_python=" + plugin]
    if importlib.util.find_spec("grpc_tools") is None:
        raise StubError(
            "generating the tern.v1 stubs needs protoc and grpc_python_plugin (Debian: apt-get "
            "install protobuf-compiler protobuf-compiler-grpc) or pip's grpcio-tools; found "
            f"protoc={protoc or 'none'}, grpc_python_plugin={plugin or 'none'}")
    return [sys.executable, "-m", "grpc_tools.protoc"]


def _include_dirs():
    """Where google/protobuf/timestamp.proto lives, for protoc's --proto_path."""
    dirs = ["/usr/include"]
    try:
        import grpc_tools
        dirs.append(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))
    except ImportError:
        pass
    return [d for d in dirs if os.path.exists(os.path.join(d, "google/protobuf/timestamp.proto"))]


def generate(proto_dir, out_dir):
    """Writes the modules into out_dir/tern/v1 and returns their paths. Raises StubError."""
    proto_dir = os.path.abspath(proto_dir)
    for f in PROTO_FILES + RPC_PROTO_FILES + (SERVICE_CONFIG,):
        if not os.path.isfile(os.path.join(proto_dir, f)):
            raise StubError(f"{os.path.join(proto_dir, f)}: not found (--proto-dir must be tern's proto/)")
    prefix = _protoc_command()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = prefix + ["--proto_path=" + proto_dir]
        cmd += ["--proto_path=" + d for d in _include_dirs()]
        cmd += ["--python_out=" + tmp, "--grpc_python_out=" + tmp]
        cmd += list(PROTO_FILES + RPC_PROTO_FILES)
        run = subprocess.run(cmd, cwd=proto_dir, capture_output=True, text=True)
        if run.returncode != 0:
            hint = ""
            if "optional" in run.stderr:
                hint = (" (this protoc predates proto3 `optional`: use Debian's protoc 3.21 with "
                        "grpc_python_plugin, or a newer grpcio-tools)")
            raise StubError(f"{' '.join(cmd)} failed: {run.stderr.strip()}{hint}")
        for generated, name in {**OUTPUTS, **RPC_OUTPUTS}.items():
            src = os.path.join(tmp, generated)
            if not os.path.isfile(src):
                raise StubError(f"protoc did not write {generated}")
            os.makedirs(os.path.dirname(os.path.join(out_dir, name)), exist_ok=True)
            shutil.copyfile(src, os.path.join(out_dir, name))
        shutil.copyfile(os.path.join(proto_dir, SERVICE_CONFIG),
                        os.path.join(out_dir, SERVICE_CONFIG))
    names = list(OUTPUTS.values()) + list(RPC_OUTPUTS.values()) + [SERVICE_CONFIG]
    return [os.path.join(out_dir, n) for n in names]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proto-dir", required=True, help="tern's proto/ directory")
    p.add_argument("--out", required=True, help="directory that receives tern/v1/*.py")
    args = p.parse_args(argv)
    try:
        generate(args.proto_dir, args.out)
    except StubError as e:
        print(f"generate_stubs.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
