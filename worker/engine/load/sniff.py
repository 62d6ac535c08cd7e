"""Detect an upload's format from its bytes, never from its name. Imports no torch.

`sniff_format(path)` answers one of `onnx`, `pt2`, `safetensors`, `state_dict`, `npz`,
`zip`. Pickles are read opcode by opcode without being executed: a pickle that
references any global outside torch's tensor/storage rebuild set (a whole module, an
optimizer, `os.system`, ...) is refused with `unsafe_format` before anything unpickles it
(defence in depth on top of `torch.load(weights_only=True)`, see CVE-2025-32434).
"""

from __future__ import annotations

import io
import json
import pickletools
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from worker.engine.errors import UnsupportedModel
from worker.engine.load.screen import check_pt2_archive

MODEL_FORMATS = ("onnx", "pt2", "safetensors", "state_dict")

# The globals a torch.save'd state dict (or a checkpoint dict of them) needs: containers
# and the functions/classes that rebuild tensors from storages. Nothing here runs code
# beyond building tensors.
_STORAGES = (
    "Float",
    "Double",
    "Half",
    "BFloat16",
    "Long",
    "Int",
    "Short",
    "Char",
    "Byte",
    "Bool",
    "ComplexFloat",
    "ComplexDouble",
    "QInt8",
    "QUInt8",
    "QInt32",
)
SAFE_PICKLE_GLOBALS = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch.storage.UntypedStorage",
    }
    | {f"torch.{s}Storage" for s in _STORAGES}
)

# Pickle opcodes that push a str onto the stack (for resolving STACK_GLOBAL).
_STRING_OPS = frozenset(
    {
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "SHORT_BINSTRING",
        "BINSTRING",
        "STRING",
    }
)
_MEMO_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_NO_STACK_OPS = frozenset({"PROTO", "FRAME", "MEMOIZE"}) | _MEMO_PUT_OPS
_FORBIDDEN_OPS = frozenset({"EXT1", "EXT2", "EXT4"})

# torch.save's legacy (pre-1.6, non-zip) format starts with this pickled magic number.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# ModelProto's top-level field numbers (onnx.proto); 7 is the graph.
_ONNX_MODEL_FIELDS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25, 26})

_UNSAFE_HINT = (
    "upload ONNX, a torch.export .pt2 archive, or weights only (safetensors, or a "
    "torch.save'd state_dict) together with arch"
)


def sniff_format(path: str | Path) -> str:
    """Return the format of the file at `path`, judged from its content.

    Raises UnsupportedModel (`unsafe_format`) for pickles that hold more than weights and
    (`invalid_model`) for anything unrecognisable.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise UnsupportedModel(f"cannot read the file: {exc}") from exc
    if size == 0:
        raise UnsupportedModel("the file is empty")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _sniff_zip(path)
    if _is_safetensors(path, head, size):
        return "safetensors"
    if head[:1] == b"\x80":
        return _sniff_pickle_stream(path)
    if head.startswith(b"\x93NUMPY"):
        raise UnsupportedModel("a bare .npy array is not a model; datasets must be .npz or .zip")
    if _looks_like_onnx(path, size):
        return "onnx"
    if _parses_as_pickle(path, size):
        raise UnsupportedModel(
            f"this is a Python pickle; loading it would run code. {_UNSAFE_HINT}",
            code="unsafe_format",
        )
    raise UnsupportedModel(
        "unrecognised file: expected ONNX, a torch.export .pt2 archive, safetensors, a "
        "torch.save'd state_dict, .npz or .zip"
    )


# --- pickles ---------------------------------------------------------------------------


def pickle_globals(data: bytes | IO[bytes]) -> set[str]:
    """The `module.name` of every global a pickle references, read without executing it.

    Reads one pickle (up to its STOP). A STACK_GLOBAL whose operands cannot be resolved
    statically is reported as `<unresolved>`, which no allow-list contains.
    """
    stream = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    found: set[str] = set()
    memo: dict[int, str | None] = {}
    recent: list[str | None] = []  # values pushed by the last stack-affecting ops
    try:
        for op, arg, _pos in pickletools.genops(stream):
            name = op.name
            if name in _FORBIDDEN_OPS:
                found.add(f"<{name}>")
            elif name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.add(f"{module}.{attr}")
                recent.append(None)
            elif name == "STACK_GLOBAL":
                if len(recent) >= 2 and isinstance(recent[-2], str) and isinstance(recent[-1], str):
                    found.add(f"{recent[-2]}.{recent[-1]}")
                else:
                    found.add("<unresolved>")
                recent.append(None)
            elif name in _MEMO_PUT_OPS:
                memo[arg if isinstance(arg, int) else -1] = recent[-1] if recent else None
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in _MEMO_GET_OPS:
                recent.append(memo.get(arg if isinstance(arg, int) else -1))
            elif name in _STRING_OPS:
                recent.append(arg if isinstance(arg, str) else None)
            elif name not in _NO_STACK_OPS:
                recent.append(None)
            del recent[:-2]
    except Exception as exc:  # malformed opcode stream, truncated data
        raise UnsupportedModel(f"corrupt or truncated pickle: {exc}") from exc
    return found


def check_pickle_is_weights(data: bytes | IO[bytes], what: str = "the file") -> None:
    """Raise `unsafe_format` unless the pickle only rebuilds tensors and containers."""
    unsafe = sorted(pickle_globals(data) - SAFE_PICKLE_GLOBALS)
    if unsafe:
        shown = ", ".join(unsafe[:5]) + (", ..." if len(unsafe) > 5 else "")
        raise UnsupportedModel(
            f"{what} is a pickle that references {shown}: more than weights, and loading "
            f"it would run code. {_UNSAFE_HINT}",
            code="unsafe_format",
        )


def _sniff_pickle_stream(path: Path) -> str:
    """A file that starts with a pickle: torch's legacy format, or a plain pickle."""
    with path.open("rb") as f:
        pickle_globals(f)  # raises invalid_model when this is not a well-formed pickle
        f.seek(0)
        if _first_pickle_value(f) != _TORCH_LEGACY_MAGIC:
            raise UnsupportedModel(
                f"this is a Python pickle; loading it would run code. {_UNSAFE_HINT}",
                code="unsafe_format",
            )
        f.seek(0)
        # magic number, protocol version, sys info, the data, the storage keys
        for _ in range(5):
            check_pickle_is_weights(f)
    return "state_dict"


def _first_pickle_value(f: IO[bytes]) -> object:
    """The value of a pickle made of one integer constant (the legacy torch magic)."""
    value: object = None
    try:
        for op, arg, _pos in pickletools.genops(f):
            if op.name in ("LONG1", "LONG4", "BININT", "BININT1", "BININT2", "LONG", "INT"):
                value = arg
            elif op.name not in ("PROTO", "FRAME", "STOP"):
                return None
    except Exception:
        return None
    return value


def _parses_as_pickle(path: Path, size: int) -> bool:
    """Whether the file is one well-formed pickle (protocols 0-1 have no magic byte)."""
    if size > 64 << 20:
        return False
    data = path.read_bytes()
    try:
        end: int | None = 0
        for _op, _arg, pos in pickletools.genops(data):
            end = pos
        return end == len(data) - 1
    except Exception:
        return False


# --- zip archives ----------------------------------------------------------------------


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if any(n == "archive_format" or n.endswith("/archive_format") for n in names):
                # Which members torch.export.load would unpickle is decided by the archive's
                # JSON, not by member names: the screen reads it (and the graph) first.
                check_pt2_archive(zf)
                return "pt2"
            if any(n.endswith("data.pkl") for n in names):
                _check_archive_pickles(zf, names, "the torch.save file")
                return "state_dict"
            if names and all(n.endswith(".npy") for n in names):
                return "npz"
            return "zip"
    except zipfile.BadZipFile as exc:
        raise UnsupportedModel(f"corrupt or truncated zip archive: {exc}") from exc


def check_torch_save_archive(data: bytes, what: str) -> None:
    """Raise `unsafe_format` unless `data` (a member holding a torch.save zip, such as a
    .pt2 archive's sample inputs) is empty or a torch.save archive of weights only."""
    if not data:
        return
    if not data.startswith(b"PK\x03\x04"):
        raise UnsupportedModel(f"{what} is not a torch.save archive", code="unsafe_format")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            names = inner.namelist()
            if len(set(names)) != len(names) or not any(n.endswith("data.pkl") for n in names):
                raise UnsupportedModel(
                    f"{what} is not a well-formed torch.save archive", code="unsafe_format"
                )
            _check_archive_pickles(inner, names, what)
    except zipfile.BadZipFile as exc:
        raise UnsupportedModel(f"{what} is a corrupt archive: {exc}") from exc


def _check_archive_pickles(zf: zipfile.ZipFile, names: Iterable[str], what: str) -> None:
    """Scan every pickle in a torch archive, and torch.save archives nested in it."""
    for name in names:
        if name.endswith(".pkl"):
            with zf.open(name) as member:
                check_pickle_is_weights(io.BytesIO(member.read()), f"{what} ({name})")
        elif name.endswith((".pt", ".pth", ".bin")):
            data = zf.read(name)
            if data.startswith(b"PK\x03\x04"):
                try:
                    with zipfile.ZipFile(io.BytesIO(data)) as inner:
                        _check_archive_pickles(inner, inner.namelist(), f"{what} ({name})")
                except zipfile.BadZipFile as exc:
                    raise UnsupportedModel(f"corrupt archive member {name}: {exc}") from exc
            elif data[:1] == b"\x80":
                check_pickle_is_weights(data, f"{what} ({name})")


# --- safetensors and ONNX --------------------------------------------------------------


def _is_safetensors(path: Path, head: bytes, size: int) -> bool:
    """8-byte little-endian header length, then a JSON object describing the tensors."""
    if len(head) < 10 or head[8:9] != b"{":
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > min(size - 8, 100 << 20):
        return False
    with path.open("rb") as f:
        f.seek(8)
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except ValueError:
        return False
    if not isinstance(header, dict):
        return False
    data_len = size - 8 - header_len
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            return False
        start, end = entry["data_offsets"]
        if not 0 <= start <= end <= data_len:
            raise UnsupportedModel(f"truncated safetensors file (tensor {key!r} past the end)")
    return True


def _read_varint(f: IO[bytes]) -> int | None:
    result = shift = 0
    for _ in range(10):
        b = f.read(1)
        if not b:
            return None
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
    return None


def _looks_like_onnx(path: Path, size: int) -> bool:
    """Walk the top-level protobuf fields: all must be ModelProto fields, one the graph."""
    seen: set[int] = set()
    with path.open("rb") as f:
        pos = 0
        while pos < size:
            key = _read_varint(f)
            if key is None:
                return False
            field, wire = key >> 3, key & 7
            if field not in _ONNX_MODEL_FIELDS:
                return False
            if wire == 0:
                if _read_varint(f) is None:
                    return False
            elif wire == 2:
                length = _read_varint(f)
                if length is None or f.tell() + length > size:
                    return False
                f.seek(length, io.SEEK_CUR)
            else:
                return False
            seen.add(field)
            pos = f.tell()
    return 7 in seen
