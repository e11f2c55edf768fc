"""Job specs from YAML or JSON files and from dicts, read as `ternctl submit` reads them.

The rules are cli/job_file.cc's, so one job file works in both clients:
- A file named *.json, or whose text starts with '{', is proto3 JSON (snake_case or
  lowerCamelCase keys, exact enum names or numbers), parsed by protobuf.
- Any other file is YAML, converted field by field against JobSpec's schema: a scalar
  takes its field's type (`name: 123` stays the text "123"), booleans are
  true/false/yes/no/on/off, integers may be hex (0x10) or octal (010), enums may be
  short and in any case (`method: hla`, `device_kind: cuda`, `hla-no-rescale`, the full
  METHOD_HLA, or the number), a single value is a one-element list, and `key:` with
  nothing is unset. An unknown key is an error naming its path and line
  ("optimization.epoch (line 4): unknown field").
- A dict (or any Mapping) is converted like YAML, with Python values taking the place
  of YAML's scalars (3, 0.1, True, or text converted as in YAML).
Every refusal is a SpecError (an InvalidArgument) whose `field` is the path.
"""

import json
import math
import os
import re
from collections.abc import Mapping

from google.protobuf import descriptor as _descriptor
from google.protobuf import json_format

from tern._pb import job_pb2
from tern.errors import SpecError

_FD = _descriptor.FieldDescriptor
_INT_TYPES = {_FD.CPPTYPE_INT32: (-2**31, 2**31 - 1), _FD.CPPTYPE_UINT32: (0, 2**32 - 1),
              _FD.CPPTYPE_INT64: (-2**63, 2**63 - 1), _FD.CPPTYPE_UINT64: (0, 2**64 - 1)}
# strtoll(s, nullptr, 0): decimal, 0x hex, leading-0 octal, an optional sign.
_C_INT = re.compile(r"^[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")
_C_HEX_FLOAT = re.compile(r"^[+-]?0[xX]")
_YAML_NULLS = ("", "~", "null", "Null", "NULL")


def load(spec):
    """A tern.v1.JobSpec from a JobSpec, a Mapping, or the path of a YAML/JSON file.

    Raises SpecError for a bad spec, OSError when the file cannot be read."""
    if isinstance(spec, job_pb2.JobSpec):
        copy = job_pb2.JobSpec()
        copy.CopyFrom(spec)
        return copy
    if isinstance(spec, Mapping):
        return _to_message(_Tree(spec, None), "")
    if isinstance(spec, (str, os.PathLike)):
        return load_file(os.fspath(spec))
    raise TypeError(f"a job spec is a dict, a JobSpec or a file path, not {type(spec).__name__}")


def load_file(path):
    """The JobSpec in the YAML or JSON file at `path` (see the module's rules)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not valid UTF-8 text (byte {e.start})", field=None) from None
    try:
        if path.endswith(".json") or text.lstrip(" \t\r\n").startswith("{"):
            return _parse_json(text)
        return parse_yaml(text)
    except SpecError as e:
        raise SpecError(f"{path}: {e.message}", field=e.field) from None


def parse_yaml(text):
    """The JobSpec of YAML text (the module's rules)."""
    import yaml  # PyYAML (Debian: python3-yaml); only YAML job files need it
    try:
        root = yaml.compose(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError as e:
        raise SpecError(f"YAML: {e}", field=None) from None
    if root is None:  # an empty file: an empty spec, as in ternctl
        return job_pb2.JobSpec()
    return _to_message(_Tree(root, yaml), "")


def parse_enum(enum_type, text):
    """The number of an enum value named as ternctl accepts it (cli/job_file.cc
    ParseEnumValue): its number, its full name or the name after the enum's prefix in
    any case with '-' for '_' ("hla-no-rescale"), or an unambiguous suffix ("queued").
    Raises ValueError naming the values."""
    text = str(text)
    n = _c_int(text)
    if n is not None and n in enum_type.values_by_number:
        return n
    upper = text.upper().replace("-", "_")
    for v in enum_type.values:
        underscore = v.name.find("_")
        if v.name == upper or (underscore >= 0 and v.name[underscore + 1:] == upper):
            return v.number
    names = [v.name for v in enum_type.values if "UNSPECIFIED" not in v.name]
    matches = [v for v in enum_type.values if "UNSPECIFIED" not in v.name
               and v.name.endswith("_" + upper) and len(v.name) > len(upper) + 1]
    if len(matches) == 1:
        return matches[0].number
    raise ValueError(f"unknown {enum_type.name} '{text}' (one of {', '.join(names)})")


# --------------------------------------------------------------------------- internals

class _Tree:
    """One node of the input: a PyYAML node (yaml module given) or a Python value."""

    __slots__ = ("node", "yaml")

    def __init__(self, node, yaml):
        self.node, self.yaml = node, yaml

    def is_null(self):
        if self.yaml is None:
            return self.node is None
        return (isinstance(self.node, self.yaml.ScalarNode) and self.node.style is None
                and self.node.value in _YAML_NULLS)

    def is_map(self):
        return isinstance(self.node, self.yaml.MappingNode) if self.yaml else \
            isinstance(self.node, Mapping)

    def is_seq(self):
        return isinstance(self.node, self.yaml.SequenceNode) if self.yaml else \
            isinstance(self.node, (list, tuple))

    def items(self):
        if self.yaml:
            return [(_Tree(k, self.yaml), _Tree(v, self.yaml)) for k, v in self.node.value]
        return [(_Tree(k, None), _Tree(v, None)) for k, v in self.node.items()]

    def elements(self):
        if self.yaml:
            return [_Tree(v, self.yaml) for v in self.node.value]
        return [_Tree(v, None) for v in self.node]

    def scalar(self):
        """The value: text (YAML, or a Python str) or a Python number/bool; None if not one."""
        if self.yaml:
            return self.node.value if isinstance(self.node, self.yaml.ScalarNode) else None
        return self.node if isinstance(self.node, (str, bool, int, float)) else None

    def where(self, path):
        s = path or "(top level)"
        if self.yaml:
            s += f" (line {self.node.start_mark.line + 1})"
        return s


def _fail(tree, path, what):
    raise SpecError(f"{tree.where(path)}: {what}", field=path or None)


def _quoted(s):
    s = str(s)
    return json.dumps(s if len(s) <= 64 else s[:64] + f"... ({len(s)} bytes)")


def _c_int(s):
    if not _C_INT.match(s):
        return None
    body = s.lstrip("+-")
    sign = -1 if s.startswith("-") else 1
    if body[:2] in ("0x", "0X"):
        return sign * int(body[2:], 16)
    if len(body) > 1 and body[0] == "0":
        return sign * int(body[1:], 8)
    return sign * int(body, 10)


def _c_double(s):
    if s in (".inf", ".Inf", "+.inf"):
        return math.inf
    if s in ("-.inf", "-.Inf"):
        return -math.inf
    if not s or "_" in s or s != s.strip():
        return None
    try:
        return float.fromhex(s) if _C_HEX_FLOAT.match(s) else float(s)
    except ValueError:
        return None


def _value(tree, field, path):
    """The proto3 JSON value of one element of `field`."""
    if field.cpp_type == _FD.CPPTYPE_MESSAGE:
        return _to_json(tree, field.message_type, path)
    s = tree.scalar()
    if s is None:
        _fail(tree, path, "expected a single value")
    native = not isinstance(s, str)
    if field.cpp_type == _FD.CPPTYPE_STRING:
        if native:
            _fail(tree, path, f"expected text, got {s!r}")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            _fail(tree, path, "not valid UTF-8 text")
        return s
    if field.cpp_type == _FD.CPPTYPE_BOOL:
        if isinstance(s, bool):
            return s
        u = str(s).upper()
        if u in ("TRUE", "YES", "ON"):
            return True
        if u in ("FALSE", "NO", "OFF"):
            return False
        _fail(tree, path, f"expected true or false, got {_quoted(s)}")
    if field.cpp_type in _INT_TYPES:
        if isinstance(s, bool) or (isinstance(s, float) and not s.is_integer()):
            v = None
        elif native:
            v = int(s)
        else:
            v = _c_int(s)
        if v is None:
            _fail(tree, path, f"expected an integer, got {_quoted(s)}")
        low, high = _INT_TYPES[field.cpp_type]
        if not low <= v <= high:
            _fail(tree, path, f"{s} is out of range")
        return v
    if field.cpp_type in (_FD.CPPTYPE_FLOAT, _FD.CPPTYPE_DOUBLE):
        v = None if isinstance(s, bool) else (float(s) if native else _c_double(s))
        if v is None:
            _fail(tree, path, f"expected a number, got {_quoted(s)}")
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return None if math.isnan(v) else v
    if field.cpp_type == _FD.CPPTYPE_ENUM:
        if isinstance(s, bool):
            _fail(tree, path, f"expected a {field.enum_type.name} value, got {s!r}")
        try:
            return field.enum_type.values_by_number[parse_enum(field.enum_type, s)].name
        except ValueError as e:
            _fail(tree, path, str(e))
    _fail(tree, path, "unsupported field type")


def _to_json(tree, message_type, path):
    """The proto3 JSON object (a dict) of a message given as a mapping."""
    out = {}
    if tree.is_null():
        return out
    if not tree.is_map():
        _fail(tree, path, f"expected a mapping of {message_type.name} fields")
    for key_tree, value in tree.items():
        key = key_tree.scalar()
        key = key if isinstance(key, str) else str(key)
        field_path = f"{path}.{key}" if path else key
        field = message_type.fields_by_name.get(key)
        if field is None:
            field = next((f for f in message_type.fields if f.json_name == key), None)
        if field is None:
            _fail(key_tree, field_path, "unknown field")
        if value.is_null():
            continue  # `key:` with nothing: unset
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if not value.is_map():
                _fail(value, field_path, "expected a mapping")
            value_field = field.message_type.fields_by_name["value"]
            entries = {}
            for k, v in value.items():
                k = k.scalar()
                k = k if isinstance(k, str) else str(k)
                entries[k] = _value(v, value_field, f"{field_path}.{k}")
            out[field.name] = entries
        elif field.label == _FD.LABEL_REPEATED:
            elements = value.elements() if value.is_seq() else [value]
            out[field.name] = [_value(e, field, f"{field_path}[{i}]" if value.is_seq() else field_path)
                               for i, e in enumerate(elements)]
        else:
            v = _value(value, field, field_path)
            if v is not None:
                out[field.name] = v
    return out


def _to_message(tree, path):
    spec = job_pb2.JobSpec()
    try:
        json_format.ParseDict(_to_json(tree, spec.DESCRIPTOR, path), spec)
    except json_format.ParseError as e:
        raise SpecError(str(e), field=None) from None
    return spec


def _parse_json(text):
    spec = job_pb2.JobSpec()
    try:
        json_format.Parse(text, spec)
    except json_format.ParseError as e:
        raise SpecError(f"JSON: {e}", field=None) from None
    return spec
