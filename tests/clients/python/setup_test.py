"""clients/python/setup.py: a wheel built from a copy of the sources (as pip builds it)
holds the tern.v1 modules generated from proto/; the sources never do."""

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


def test_wheel_carries_generated_stubs(tmp_path):
    for module, package in (("pip", "python3-pip"), ("setuptools", "python3-setuptools")):
        if importlib.util.find_spec(module) is None:  # not imported: setuptools patches distutils
            pytest.skip(f"{package} builds the wheel and is not installed")
    source = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "clients", "python"), source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    assert not (source / "tern" / "v1").exists()
    env = dict(os.environ, TERN_PROTO_DIR=os.path.join(ROOT, "proto"), PIP_NO_INDEX="1")
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation",
                          "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    (wheel,) = (tmp_path / "dist").glob("tern_client-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("tern/v1/job_pb2.py", "tern/v1/job_service_pb2_grpc.py", "tern/client.py",
                   "google/api/field_behavior_pb2.py",  # job_pb2 imports it
                   "tern/artifact.py", "tern/v1/google_rpc_status_pb2.py",
                   "tern/v1/google_rpc_error_details_pb2.py", "tern/v1/service_config.json"):
        assert module in names
    env["TERN_PROTO_DIR"] = str(tmp_path / "nowhere")
    shutil.rmtree(source / "build", ignore_errors=True)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation",
                          "--no-deps", "-w", str(tmp_path / "dist2"), str(source)],
                         capture_output=True, text=True, env=env)
    assert run.returncode != 0 and "not found" in run.stdout + run.stderr
