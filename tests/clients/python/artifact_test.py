"""tern.artifact against files tern-trainer wrote (fetched through the service) and
damaged copies of them; every refusal is checked against `ternctl inspect` (the C++
reader, quant/artifact.cc), which must refuse the same file (exit 5)."""

import json
import struct
import subprocess
import zlib

import numpy as np
import pytest

from tern import artifact
from conftest import binary


def inspect(path):
    """`ternctl inspect --json`: (exit code, parsed stdout or stderr text)."""
    run = subprocess.run([binary("ternctl"), "inspect", str(path), "--json"],
                         capture_output=True, text=True)
    return run.returncode, (json.loads(run.stdout) if run.returncode == 0 else run.stderr)


def split(data):
    """(header dict, payload bytes) of a well-formed file."""
    header_len, payload_len = struct.unpack_from("<IQ", data, 8)
    header = json.loads(data[20:20 + header_len])
    return header, data[20 + header_len:20 + header_len + payload_len]


def assemble(header, payload, version=(1, 0)):
    """A file with consistent lengths and checksum around `header` and `payload`."""
    text = json.dumps(header).encode()
    body = b"TERN" + struct.pack("<HHIQ", version[0], version[1], len(text), len(payload))
    body += text + payload
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def test_reads_what_the_cpp_reader_reads(fetched):
    for name, path in fetched.items():
        art = artifact.read(path)
        code, cpp = inspect(path)
        assert code == 0, cpp
        assert art.architecture == cpp["architecture"] and art.metadata == cpp["metadata"]
        assert art.packing == cpp["packing"]
        assert art.ternary_weights == cpp["ternary_weights"]
        assert art.bits_per_ternary_weight == pytest.approx(cpp["bits_per_ternary_weight"])
        by_name = {t["name"]: t for t in cpp["tensors"]}
        assert [t.name for t in art.tensors] == [t["name"] for t in cpp["tensors"]]
        for t in art.tensors:
            c = by_name[t.name]
            assert list(t.shape) == c["shape"] and t.kind == c["kind"]
            if t.kind == "ternary":
                assert t.granularity == c["granularity"]
                assert set(np.unique(t.codes)) <= {-1, 0, 1}
                assert np.mean(t.codes == 0) == pytest.approx(c["sparsity"])
                assert np.mean(t.pos_scale) == pytest.approx(c["positive_scale_mean"], rel=1e-6)
                assert np.mean(t.neg_scale) == pytest.approx(c["negative_scale_mean"], rel=1e-6)
                w = t.array()
                assert w.dtype == np.float32 and w.shape == t.shape
                assert np.all((w == 0) == (t.codes.reshape(t.shape) == 0))
    assert {artifact.read(p).packing for p in fetched.values()} == {"2bit", "base3"}


def damaged_cases(data):
    """(what, bytes, message the Python reader gives) for damaged copies of `data`."""
    header, payload = split(data)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    ternary = next(t for t in header["tensors"] if t["kind"] == "ternary")
    bad_code = bytearray(payload)
    bad_code[ternary["codes_offset"]] = 0xFF  # 2-bit code 3 / base-3 byte 255: invalid
    nan_scale = bytearray(payload)
    nan_scale[ternary["scales_offset"]:ternary["scales_offset"] + 4] = struct.pack("<f", float("nan"))
    outside = json.loads(json.dumps(header))
    outside["tensors"][0]["offset"] = len(payload)
    wrong_kind = json.loads(json.dumps(header))
    wrong_kind["tensors"][0]["kind"] = "int4"
    return [
        ("a flipped byte", bytes(flipped), "checksum mismatch"),
        ("truncated", data[:len(data) - 100], "truncated?"),
        ("shorter than the fixed header", data[:10], "shorter than the fixed header"),
        ("wrong magic", b"TERX" + data[4:], "bad magic"),
        ("a future version", assemble(header, payload, (2, 0)), "version 2.0 is not supported"),
        ("an invalid packed code", assemble(header, bytes(bad_code)),
         f"tensor '{ternary['name']}': packed codes: invalid"),
        ("a non-finite scale", assemble(header, bytes(nan_scale)), "non-finite scale"),
        ("a range outside the payload", assemble(outside, payload), "outside the payload"),
        ("an unknown tensor kind", assemble(wrong_kind, payload), "unknown kind 'int4'"),
        ("an unknown packing", assemble(dict(header, packing="3bit"), payload), "unknown packing"),
        ("a header that is no object", _raw_header(b"[1, 2]", payload), "header is not a JSON object"),
    ]


def _raw_header(text, payload):
    body = b"TERN" + struct.pack("<HHIQ", 1, 0, len(text), len(payload)) + text + payload
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


@pytest.mark.parametrize("which", ["hla", "base3"])
def test_damaged_files_are_refused_naming_the_damage(fetched, tmp_path, which):
    data = open(fetched[which], "rb").read()
    assert artifact.parse(assemble(*split(data))).tensors  # the re-assembly itself is sound
    for what, damaged, message in damaged_cases(data):
        path = tmp_path / "damaged.tern"
        path.write_bytes(damaged)
        with pytest.raises(artifact.ArtifactError) as refused:
            artifact.read(path)
        assert message in str(refused.value), what
        assert str(path) in str(refused.value), what
        code, cpp = inspect(path)
        assert code == 5, f"{what}: ternctl inspect accepted it"
    with pytest.raises(artifact.UnsupportedVersion):
        artifact.parse(assemble(*split(data), (2, 0)))
    with pytest.raises(artifact.CorruptArtifact, match="truncated"):
        artifact.parse(data[:-1])


def test_unpack_checks_every_byte():
    codes = np.array([1, -1, 0, 1, 1, -1, 0], dtype=np.int8)
    two_bit = bytes([0b01_00_10_01, 0b00_00_10_01])  # 4 codes per byte, code 0 pads
    assert artifact.unpack_codes(two_bit, 7, "2bit").tolist() == codes.tolist()
    digits = codes + 1
    base3 = bytes([int(sum(int(d) * 3 ** i for i, d in enumerate(digits[:5]))),
                   int(sum(int(d) * 3 ** i for i, d in enumerate(list(digits[5:]) + [1, 1, 1])))])
    assert artifact.unpack_codes(base3, 7, "base3").tolist() == codes.tolist()
    with pytest.raises(artifact.CorruptArtifact, match="non-zero padding"):
        artifact.unpack_codes(bytes([base3[0], base3[1] + 81]), 7, "base3")
    with pytest.raises(artifact.CorruptArtifact, match="invalid 2-bit code at byte 1"):
        artifact.unpack_codes(bytes([two_bit[0], two_bit[1] | 0b01_00_00_00]), 7, "2bit")
    with pytest.raises(artifact.CorruptArtifact, match="invalid base-3 byte 243 at 0"):
        artifact.unpack_codes(bytes([243, 0]), 7, "base3")
    with pytest.raises(artifact.CorruptArtifact, match="3 bytes for 7 weights, expected 2"):
        artifact.unpack_codes(b"\0\0\0", 7, "base3")
