"""tern.spec: job files read as ternctl reads them (cli/job_file.cc). The shared job file
(testdata/small_job.yaml) is submitted by both clients to a real ternd, which must store
the same spec; refusals name the same field and line."""

import json
import os

import pytest

import tern
from tern import spec
from tern._pb import job_pb2
from conftest import SMALL_JOB_FILE, ternctl_secure

STORED_BY_SERVER = ("owner", "checkpoint")  # filled in by ternd


def stored_spec(job_dict):
    return {k: v for k, v in job_dict["spec"].items() if k not in STORED_BY_SERVER}


@pytest.mark.parametrize("form", ["yaml", "json"])
def test_ternctl_and_python_store_the_same_spec(secure_service, alice, tmp_path, form):
    path = SMALL_JOB_FILE
    if form == "json":  # the same spec as proto3 JSON, lowerCamelCase keys
        from google.protobuf import json_format
        path = tmp_path / "job.json"
        path.write_text(json_format.MessageToJson(spec.load(SMALL_JOB_FILE)))
    run = ternctl_secure(secure_service, "alice", "submit", str(path), "--json")
    assert run.returncode == 0, run.stderr
    by_ternctl = json.loads(run.stdout)["job"]
    by_python = alice.submit(str(path))
    try:
        assert stored_spec(by_python.to_dict()) == stored_spec(by_ternctl)
        assert by_ternctl["spec"]["quantization"]["method"] == "METHOD_HLA"
        assert by_ternctl["spec"]["dataset"]["max_train_examples"] == 2048
    finally:
        alice.cancel(by_python.id)
        alice.cancel(by_ternctl["id"])


@pytest.mark.parametrize("text, field, message", [
    ("optimization: {epoch: 3}\n", "optimization.epoch", "optimization.epoch (line 1): unknown field"),
    ("name: x\nquantization:\n  method: hlx\n", "quantization.method",
     "quantization.method (line 3): unknown QuantMethod 'hlx'"),
    ("optimization: {epochs: three}\n", "optimization.epochs",
     "optimization.epochs (line 1): expected an integer"),
    ("dataset: {augment: maybe}\n", "dataset.augment", "expected true or false"),
    ("optimization: {epochs: 99999999999}\n", "optimization.epochs", "is out of range"),
    ("labels: [a, b]\n", "labels", "labels (line 1): expected a mapping"),
])
def test_bad_yaml_is_refused_as_ternctl_refuses_it(secure_service, tmp_path, text, field, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(tern.SpecError) as refused:
        spec.load(str(path))
    assert refused.value.field == field
    assert message in refused.value.message
    run = ternctl_secure(secure_service, "alice", "submit", str(path))
    assert run.returncode == 2 and message in run.stderr, run.stderr


def test_yaml_scalars_take_their_fields_types():
    s = spec.parse_yaml("name: 123\nlabels: {n: 7}\noptimization: {epochs: 010, lr: .inf,"
                        " nesterov: OFF}\nresources: {device_kind: Cuda}\n"
                        "quantization: {method: hla-no-rescale}\n")
    assert s.name == "123" and s.labels["n"] == "7"
    assert s.optimization.epochs == 8  # octal, as strtoll reads it
    assert s.optimization.lr == float("inf") and s.optimization.HasField("nesterov")
    assert not s.optimization.nesterov
    assert s.resources.device_kind == job_pb2.DEVICE_CUDA
    assert s.quantization.method == job_pb2.METHOD_HLA_NO_RESCALE
    assert spec.parse_yaml("") == job_pb2.JobSpec()
    assert not spec.parse_yaml("optimization:\n  lr:\n").optimization.HasField("lr")


def test_dicts_take_python_values_and_yaml_shorthand():
    s = spec.load({"optimization": {"epochs": 2, "lr": 0.1, "nesterov": False},
                   "quantization": {"method": "twn"}, "model": {"width_multiplier": "0.5"}})
    assert (s.optimization.epochs, s.optimization.lr) == (2, 0.1)
    assert s.optimization.HasField("nesterov") and s.quantization.method == job_pb2.METHOD_TWN
    assert s.model.width_multiplier == 0.5
    for bad, field in (({"optimization": {"epochs": 2.5}}, "optimization.epochs"),
                       ({"name": 5}, "name"), ({"optimization": {"epochs": True}}, "optimization.epochs")):
        with pytest.raises(tern.SpecError) as refused:
            spec.load(bad)
        assert refused.value.field == field
    with pytest.raises(TypeError):
        spec.load(42)


def test_enum_names_as_ternctl_takes_them():
    states = job_pb2.JobState.DESCRIPTOR
    assert spec.parse_enum(states, "queued") == job_pb2.JOB_STATE_QUEUED
    assert spec.parse_enum(states, "JOB_STATE_RUNNING") == job_pb2.JOB_STATE_RUNNING
    assert spec.parse_enum(states, "4") == job_pb2.JOB_STATE_SUCCEEDED
    with pytest.raises(ValueError, match="one of JOB_STATE_QUEUED"):
        spec.parse_enum(states, "sleeping")


def test_json_files_are_proto3_json(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{"optimization": {"epochs": 2, "batchSize": 64},'
                    ' "quantization": {"method": "METHOD_TTQ"}}')
    s = spec.load(str(path))
    assert (s.optimization.epochs, s.optimization.batch_size) == (2, 64)
    path.write_text('{"optimization": {"epoch": 2}}')
    with pytest.raises(tern.SpecError, match="epoch"):
        spec.load(str(path))
    with pytest.raises(FileNotFoundError):
        spec.load(str(tmp_path / "missing.yaml"))
    assert os.path.basename(SMALL_JOB_FILE) == "small_job.yaml"
