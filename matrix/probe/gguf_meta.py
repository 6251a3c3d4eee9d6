"""GGUF metadata, standard library only: the header and the key/value pairs, never the tensors.

The template stage reads ``tokenizer.chat_template`` (and the special tokens) from a model's
``model.gguf`` with it, so a cell renders exactly the template that llama.cpp-based engines see.

Layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): the magic ``GGUF``, a
uint32 version (1, 2 or 3), the tensor count and the KV count (uint64; uint32 in version 1),
then the KV pairs: a GGUF string key, a uint32 value type and the value. Strings are a length
(uint64; uint32 in version 1) and UTF-8 bytes; arrays are an element type, a count and the
elements. Files are little-endian unless written big-endian, which shows as a byte-swapped
version. Reading stops after the last KV pair: tensor infos and data are never touched.

The file is untrusted: every length and count is checked against the bytes the file has left
and against limits, so a corrupt header raises :class:`GGUFError` instead of allocating.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAGIC = b"GGUF"

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
TYPE_NAMES = {
    UINT8: "uint8",
    INT8: "int8",
    UINT16: "uint16",
    INT16: "int16",
    UINT32: "uint32",
    INT32: "int32",
    FLOAT32: "float32",
    BOOL: "bool",
    STRING: "string",
    ARRAY: "array",
    UINT64: "uint64",
    INT64: "int64",
    FLOAT64: "float64",
}
SCALARS = {
    UINT8: "B",
    INT8: "b",
    UINT16: "H",
    INT16: "h",
    UINT32: "I",
    INT32: "i",
    FLOAT32: "f",
    BOOL: "?",
    UINT64: "Q",
    INT64: "q",
    FLOAT64: "d",
}

MAX_KV = 1 << 20
MAX_STRING = 1 << 28  # 256 MiB: far beyond any chat template or token
MAX_ARRAY = 1 << 26
MAX_DEPTH = 4


class GGUFError(ValueError):
    """Not a GGUF file, or a malformed one (what, and at which byte offset)."""


@dataclass
class GGUFMetadata:
    version: int
    tensor_count: int
    byteorder: str  # "little" | "big"
    kv: dict = field(default_factory=dict)
    types: dict = field(default_factory=dict)
    """key -> type name; arrays as ``array[<element type>]``."""
    end_offset: int = 0
    """Where the KV section ends (the tensor infos start)."""

    def get(self, key: str, default=None):
        return self.kv.get(key, default)

    @property
    def chat_template(self) -> str | None:
        value = self.kv.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    def named_chat_templates(self) -> dict:
        """``tokenizer.chat_template.<name>`` entries (e.g. ``tool_use``), by name."""
        prefix = "tokenizer.chat_template."
        return {k[len(prefix) :]: v for k, v in self.kv.items() if k.startswith(prefix) and isinstance(v, str)}

    def token(self, key: str) -> str | None:
        """The text of a special token named by id, e.g. ``token("tokenizer.ggml.eos_token_id")``."""
        tokens = self.kv.get("tokenizer.ggml.tokens")
        idx = self.kv.get(key)
        if not isinstance(tokens, list) or not isinstance(idx, int) or isinstance(idx, bool):
            return None
        return tokens[idx] if 0 <= idx < len(tokens) and isinstance(tokens[idx], str) else None


class _Reader:
    def __init__(self, f, size: int):
        self.f = f
        self.size = size
        self.pos = 0
        self.order = "<"
        self.wide = True  # uint64 lengths and counts (version >= 2)

    def read(self, n: int) -> bytes:
        if n < 0 or n > self.size - self.pos:
            raise GGUFError(f"truncated at byte {self.pos}: wanted {n} bytes, {self.size - self.pos} left")
        data = self.f.read(n)
        if len(data) != n:
            raise GGUFError(f"truncated at byte {self.pos}: wanted {n} bytes, got {len(data)}")
        self.pos += n
        return data

    def scalar(self, vtype: int):
        fmt = self.order + SCALARS[vtype]
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def length(self) -> int:
        return self.scalar(UINT64 if self.wide else UINT32)

    def string(self) -> str:
        at = self.pos
        n = self.length()
        if n > MAX_STRING:
            raise GGUFError(f"string at byte {at} claims {n} bytes (limit {MAX_STRING})")
        raw = self.read(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int, depth: int = 0):
        if vtype in SCALARS:
            return self.scalar(vtype)
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            return self.array(self.scalar(UINT32), depth)
        raise GGUFError(f"unknown value type {vtype} at byte {self.pos - 4}")

    def array(self, etype: int, depth: int = 0) -> list:
        if depth >= MAX_DEPTH:
            raise GGUFError(f"arrays nested deeper than {MAX_DEPTH} at byte {self.pos}")
        at = self.pos - 4
        count = self.length()
        if etype not in TYPE_NAMES:
            raise GGUFError(f"array at byte {at} has unknown element type {etype}")
        if count > MAX_ARRAY:
            raise GGUFError(f"array at byte {at} claims {count} elements (limit {MAX_ARRAY})")
        if etype in SCALARS:  # one read, one unpack
            fmt = f"{self.order}{count}{SCALARS[etype]}"
            return list(struct.unpack(fmt, self.read(struct.calcsize(fmt))))
        return [self.value(etype, depth + 1) for _ in range(count)]


def read_metadata(path, keys=None) -> GGUFMetadata:
    """Header and KV pairs of the GGUF file at ``path``. With ``keys`` (an iterable of names),
    only those are kept (all are still parsed: a GGUF has no index)."""
    import os

    wanted = set(keys) if keys is not None else None
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        r = _Reader(f, size)
        if r.read(4) != MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (bad magic)")
        raw_version = r.read(4)
        version = struct.unpack("<I", raw_version)[0]
        byteorder = "little"
        if version & 0xFFFF == 0 and version != 0:  # written big-endian
            r.order, byteorder = ">", "big"
            version = struct.unpack(">I", raw_version)[0]
        if version not in (1, 2, 3):
            raise GGUFError(f"{path}: unsupported GGUF version {version}")
        r.wide = version >= 2
        tensor_count = r.length()
        kv_count = r.length()
        if kv_count > MAX_KV:
            raise GGUFError(f"{path}: header claims {kv_count} KV pairs (limit {MAX_KV})")
        meta = GGUFMetadata(version, tensor_count, byteorder)
        for i in range(kv_count):
            key = r.string()
            vtype = r.scalar(UINT32)
            if vtype not in TYPE_NAMES:
                raise GGUFError(f"{path}: KV #{i} {key!r} has unknown value type {vtype} (byte {r.pos - 4})")
            if vtype == ARRAY:
                etype = r.scalar(UINT32)
                tname = f"array[{TYPE_NAMES.get(etype, etype)}]"
                value = r.array(etype)
            else:
                tname, value = TYPE_NAMES[vtype], r.value(vtype)
            if wanted is None or key in wanted:
                meta.kv[key] = value
                meta.types[key] = tname
        meta.end_offset = r.pos
    return meta


def chat_template(path) -> str | None:
    """``tokenizer.chat_template`` of a GGUF file, or None when it has none."""
    return read_metadata(path).chat_template


SPECIAL_TOKEN_KEYS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
}


def special_tokens(meta: GGUFMetadata) -> dict:
    """``bos_token`` etc. as text, from the token ids and the vocabulary (what llama.cpp passes to a template)."""
    out = {}
    for name, key in SPECIAL_TOKEN_KEYS.items():
        text = meta.token(key)
        if text is not None:
            out[name] = text
    return out


def write_metadata(
    path, kv: dict, *, version: int = 3, byteorder: str = "little", tensor_count: int = 0, types: dict | None = None
) -> None:
    """Write a metadata-only GGUF (tests and fixtures). Python values map to GGUF types: str
    string, bool bool, int int64 (or ``types[key]``), float float64 (or float32), list array
    of the first element's type; ``types`` names a type per key (``"uint32"``, ``"array[int8]"``)."""
    order = "<" if byteorder == "little" else ">"
    names = {v: k for k, v in TYPE_NAMES.items()}
    types = types or {}

    def infer(value) -> int:
        if isinstance(value, bool):
            return BOOL
        if isinstance(value, int):
            return INT64
        if isinstance(value, float):
            return FLOAT64
        if isinstance(value, str):
            return STRING
        if isinstance(value, list):
            return ARRAY
        raise TypeError(f"no GGUF type for {type(value).__name__}")

    def length(n: int) -> bytes:
        return struct.pack(order + ("Q" if version >= 2 else "I"), n)

    def enc(vtype: int, value, etype_name: str | None = None) -> bytes:
        if vtype in SCALARS:
            return struct.pack(order + SCALARS[vtype], value)
        if vtype == STRING:
            raw = value.encode("utf-8")
            return length(len(raw)) + raw
        etype = names[etype_name] if etype_name else (infer(value[0]) if value else UINT8)
        body = b"".join(enc(etype, v) for v in value)
        return struct.pack(order + "I", etype) + length(len(value)) + body

    out = [MAGIC, struct.pack(order + "I", version), length(tensor_count), length(len(kv))]
    for key, value in kv.items():
        tname = types.get(key)
        etype_name = None
        if tname and tname.startswith("array["):
            vtype, etype_name = ARRAY, tname[6:-1]
        elif tname:
            vtype = names[tname]
        else:
            vtype = infer(value)
        out.append(enc(STRING, key) + struct.pack(order + "I", vtype) + enc(vtype, value, etype_name))
    with open(path, "wb") as f:
        f.write(b"".join(out))
