"""Reads tern's packed ternary model files (.tern) in pure Python and NumPy.

    art = tern.artifact.read("model.tern")
    art.architecture        # {"arch": "resnet20", "in_channels": 1, "num_classes": 10, ...}
    art.metadata            # {"method": "hla", "normalization": {"mean": [...], "std": [...]}, ...}
    art.arrays()            # {name: float32 ndarray}, ternary weights dequantized
    art.to_torch_state_dict()   # loads into bench/reference's PyTorch ResNet (needs torch)

The format is quant/artifact.h's (little-endian): "TERN", u16 major, u16 minor, u32
header length H, u64 payload length P, H bytes of JSON header, P bytes of payload
(2-bit or base-3 packed codes, float32 scales and tensors), u32 CRC-32 of everything
before it. The reader makes every check the C++ reader (quant/artifact.cc,
quant/packing.cc) makes, so a truncated, corrupt or future-version file raises a
CorruptArtifact / UnsupportedVersion naming what is wrong, never returns garbage.
"""

import json
import struct
import zlib

import numpy as np

MAJOR_VERSION = 1
_MAGIC = b"TERN"
_PREFIX = 20
_CHECKSUM = 4
_MAX_HEADER = 64 << 20
_MAX_NUMEL = 1 << 36
_MAX_DIMS = 8
_MAX_BASE3_BYTE = 242  # 3^5 - 1


class ArtifactError(ValueError):
    """A .tern file this reader refuses."""


class CorruptArtifact(ArtifactError):
    """Truncated or damaged bytes (the C++ reader's DATA_LOSS)."""

    def __init__(self, what):
        super().__init__("corrupt .tern artifact: " + what)


class UnsupportedVersion(ArtifactError):
    """A format major version this reader does not know (FAILED_PRECONDITION in C++)."""


class Tensor:
    """One named tensor. kind "float32": `values`; kind "ternary": `codes` (int8 in
    {-1, 0, +1}), `pos_scale` and `neg_scale` (float32, one per unit: 1, or shape[0]
    under granularity "channel"). array() gives the float32 values either way."""

    def __init__(self, name, shape, kind, values=None, codes=None, granularity=None,
                 pos_scale=None, neg_scale=None):
        self.name, self.shape, self.kind = name, tuple(shape), kind
        self.values, self.codes, self.granularity = values, codes, granularity
        self.pos_scale, self.neg_scale = pos_scale, neg_scale

    @property
    def numel(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def array(self):
        """The tensor's float32 values (ternary: +pos_scale, 0, -neg_scale per code)."""
        if self.kind == "float32":
            return self.values.reshape(self.shape)
        units = len(self.pos_scale)
        c = self.codes.reshape(units, -1)
        w = (c > 0) * self.pos_scale[:, None] - (c < 0) * self.neg_scale[:, None]
        return w.astype(np.float32).reshape(self.shape)

    def __repr__(self):
        extra = f", {self.granularity}" if self.kind == "ternary" else ""
        return f"Tensor({self.name!r}, {list(self.shape)}, {self.kind}{extra})"


class Artifact:
    """A parsed .tern file: `architecture` and `metadata` (dicts), `packing` ("2bit" or
    "base3"), `tensors` (a list of Tensor in file order), `version` ((major, minor))."""

    def __init__(self, architecture, metadata, packing, tensors, version):
        self.architecture, self.metadata, self.packing = architecture, metadata, packing
        self.tensors, self.version = tensors, version

    def __getitem__(self, name):
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def ternary_weights(self):
        return sum(t.numel for t in self.tensors if t.kind == "ternary")

    @property
    def bits_per_ternary_weight(self):
        """Packed code bits per ternary weight (scales excluded): 2 or about 1.6."""
        n = self.ternary_weights
        if n == 0:
            return 0.0
        return 8.0 * sum(packed_size(t.numel, self.packing) for t in self.tensors
                         if t.kind == "ternary") / n

    def arrays(self):
        """{name: float32 ndarray} in file order (ternary weights dequantized)."""
        return {t.name: t.array() for t in self.tensors}

    def to_torch_state_dict(self):
        """{name: torch.Tensor} for Module.load_state_dict: float32 tensors, BatchNorm's
        num_batches_tracked as int64 (as PyTorch keeps it). Names are tern's module
        names, which bench/reference/reference_trainer.py's ResNet shares."""
        import torch
        out = {}
        for t in self.tensors:
            value = torch.from_numpy(np.ascontiguousarray(t.array()))
            if t.name.endswith("num_batches_tracked"):
                value = value.to(torch.int64)
            out[t.name] = value
        return out

    def normalize(self, images_u8):
        """uint8 images [N, C, H, W] to the float32 network input the model was trained on
        (pixel / 255, minus metadata's normalization mean, over its std, per channel)."""
        norm = self.metadata.get("normalization")
        if not norm:
            raise ArtifactError("the artifact's metadata has no input normalization")
        mean = np.asarray(norm["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(norm["std"], dtype=np.float32).reshape(1, -1, 1, 1)
        return ((np.asarray(images_u8, dtype=np.float32) / 255.0 - mean) / std).astype(np.float32)

    def __repr__(self):
        return (f"Artifact({self.architecture}, {self.packing}, {len(self.tensors)} tensors, "
                f"{self.ternary_weights} ternary weights)")


def read(path):
    """The Artifact in the file at `path`. Raises ArtifactError (naming the file)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return parse(data)
    except ArtifactError as e:
        e.args = (f"{path}: {e}",)
        raise


def parse(data):
    """The Artifact in `data` (bytes). Raises CorruptArtifact or UnsupportedVersion."""
    data = memoryview(bytes(data))
    n = len(data)
    if n < _PREFIX + _CHECKSUM:
        raise CorruptArtifact(f"file is {n} bytes, shorter than the fixed header")
    if data[:4] != _MAGIC:
        raise CorruptArtifact("bad magic (not a .tern file)")
    major, minor, header_len, payload_len = struct.unpack_from("<HHIQ", data, 4)
    if major != MAJOR_VERSION:
        raise UnsupportedVersion(f".tern format version {major}.{minor} is not supported "
                                 f"(this reader reads {MAJOR_VERSION}.x)")
    body = n - _PREFIX - _CHECKSUM
    if header_len > _MAX_HEADER or header_len > body or payload_len != body - header_len:
        raise CorruptArtifact(f"lengths (header {header_len}, payload {payload_len}) do not "
                              f"match the file size {n} (truncated?)")
    stored = struct.unpack_from("<I", data, n - _CHECKSUM)[0]
    computed = zlib.crc32(data[:n - _CHECKSUM]) & 0xFFFFFFFF
    if computed != stored:
        raise CorruptArtifact(f"checksum mismatch (stored {stored:08x}, computed {computed:08x})")
    try:
        header = json.loads(bytes(data[_PREFIX:_PREFIX + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise CorruptArtifact("header is not a JSON object")
    if not (isinstance(header.get("architecture"), dict) and isinstance(header.get("metadata"), dict)
            and isinstance(header.get("tensors"), list) and isinstance(header.get("packing"), str)):
        raise CorruptArtifact("header lacks architecture, metadata, packing or tensors")
    packing = header["packing"].lower()
    if packing not in ("2bit", "base3"):
        raise CorruptArtifact("unknown packing")
    payload = data[_PREFIX + header_len:_PREFIX + header_len + payload_len]
    tensors = [_tensor(entry, payload, packing) for entry in header["tensors"]]
    return Artifact(header["architecture"], header["metadata"], packing, tensors, (major, minor))


def packed_size(count, packing):
    """Bytes of `count` packed codes: 4 per byte (2bit) or 5 per byte (base3)."""
    per = 4 if packing == "2bit" else 5
    return (count + per - 1) // per


def unpack_codes(packed, count, packing):
    """int8 codes in {-1, 0, +1} from their packing (quant/packing.h). Raises
    CorruptArtifact naming the first bad byte."""
    b = np.frombuffer(packed, dtype=np.uint8)
    if b.size != packed_size(count, packing):
        raise CorruptArtifact(f"packed codes: {b.size} bytes for {count} weights, expected "
                              f"{packed_size(count, packing)}")
    if packing == "2bit":
        bits = ((b[:, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3).reshape(-1)
        bad = (bits == 3)
        bad[count:] |= bits[count:] != 0  # padding must be code 0
        if bad.any():
            raise CorruptArtifact(f"packed codes: invalid 2-bit code at byte {int(np.argmax(bad)) // 4}")
        return np.array([0, 1, -1, 0], dtype=np.int8)[bits[:count]]
    over = b > _MAX_BASE3_BYTE
    if over.any():
        i = int(np.argmax(over))
        raise CorruptArtifact(f"packed codes: invalid base-3 byte {int(b[i])} at {i}")
    digits = ((b[:, None] // np.array([1, 3, 9, 27, 81], dtype=np.uint8)) % 3).reshape(-1)
    padding = digits[count:] != 1  # padding must be code 0 (digit 1)
    if padding.any():
        raise CorruptArtifact(f"packed codes: non-zero padding in byte {(count + int(np.argmax(padding))) // 5}")
    return (digits[:count].astype(np.int8) - 1)


def _unsigned(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _range(payload, entry, offset_key, length_key, name):
    offset, length = entry.get(offset_key), entry.get(length_key)
    if not (_unsigned(offset) and _unsigned(length)):
        raise CorruptArtifact(f"tensor '{name}' lacks {offset_key}/{length_key}")
    if offset > len(payload) or length > len(payload) - offset:
        raise CorruptArtifact(f"tensor '{name}' range [{offset}, +{length}) outside the payload "
                              f"of {len(payload)} bytes")
    return payload[offset:offset + length]


def _tensor(entry, payload, packing):
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise CorruptArtifact("tensor entry without a name")
    name = entry["name"]
    shape = entry.get("shape")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise CorruptArtifact(f"tensor '{name}' has no valid shape")
    numel = 1
    for d in shape:
        if not _unsigned(d) or d > 1 << 31:
            raise CorruptArtifact(f"tensor '{name}' has a bad dimension")
        numel *= d
        if numel > _MAX_NUMEL:
            raise CorruptArtifact(f"tensor '{name}' is too large")
    kind = entry.get("kind") if isinstance(entry.get("kind"), str) else ""
    if kind == "float32":
        raw = _range(payload, entry, "offset", "length", name)
        if len(raw) != numel * 4:
            raise CorruptArtifact(f"tensor '{name}' has {len(raw)} bytes for {numel} floats")
        return Tensor(name, shape, kind, values=np.frombuffer(raw, dtype="<f4").astype(np.float32))
    if kind != "ternary":
        raise CorruptArtifact(f"tensor '{name}' has unknown kind '{kind}'")
    granularity = entry.get("granularity") if isinstance(entry.get("granularity"), str) else ""
    if not (granularity == "tensor" or (granularity == "channel" and shape)):
        raise CorruptArtifact(f"tensor '{name}' has bad granularity '{granularity}'")
    packed = _range(payload, entry, "codes_offset", "codes_length", name)
    try:
        codes = unpack_codes(packed, numel, packing)
    except CorruptArtifact as e:
        raise CorruptArtifact(f"tensor '{name}': {str(e)[len('corrupt .tern artifact: '):]}") from None
    scales = _range(payload, entry, "scales_offset", "scales_length", name)
    units = shape[0] if granularity == "channel" else 1
    if len(scales) != units * 8:
        raise CorruptArtifact(f"tensor '{name}' has {len(scales)} scale bytes for {units} units")
    all_scales = np.frombuffer(scales, dtype="<f4").astype(np.float32)
    if not np.isfinite(all_scales).all():
        raise CorruptArtifact(f"tensor '{name}' has a non-finite scale")
    return Tensor(name, shape, kind, codes=codes, granularity=granularity,
                  pos_scale=all_scales[:units], neg_scale=all_scales[units:])
