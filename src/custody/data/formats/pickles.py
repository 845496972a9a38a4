"""Recognise Python pickles and PyTorch checkpoints without ever unpickling them.

Loading a pickle runs code chosen by whoever wrote the file, so custody only looks at one:
``pickletools.genops`` decodes opcodes without executing them, over a bounded prefix, and
the GLOBAL / STACK_GLOBAL / INST imports it finds are listed for the reviewer. Every file
recognised here is reported unsafe.
"""

from __future__ import annotations

import pickletools
import re
import struct
import warnings
from dataclasses import dataclass, field
from typing import IO, Any, cast

from custody.data.formats.source import ByteSource
from custody.data.formats.zip_archive import open_zip, read_member_prefix

PROTO = 0x80
PICKLE_PROTOCOLS = range(2, 6)
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
"""The integer ``torch.save`` pickles first in its pre-zip (legacy) format."""

MAX_SCAN_BYTES = 4 * 1024 * 1024
MAX_SCAN_OPS = 500_000
MAX_IMPORTS = 256
MAX_PKL_MEMBERS = 8
LEGACY_TORCH_PICKLES = 5
"""Magic number, protocol version, system info, the object, the storage keys."""

_TORCH_DATA_PKL = re.compile(r"[^/]+/data\.pkl")
_TORCH_PKL = re.compile(r"[^/]+/[^/]+\.pkl")
_PROTOCOL_0_STARTS = frozenset(b"(}])c")
"""Opcodes a protocol 0/1 pickle of a container or class instance plausibly starts with."""
_MIN_OPS_FOR_UNFINISHED = 64

_SCAN_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    OverflowError,
    struct.error,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
)

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
_NO_PUSH_OPS = frozenset({"PROTO", "FRAME", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "STOP"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


@dataclass
class PickleScan:
    """What a static pass over one or more concatenated pickles found."""

    protocol: int | None = None
    imports: list[str] = field(default_factory=list)
    imports_truncated: bool = False
    pickles: int = 0
    opcodes: int = 0
    scanned_bytes: int = 0
    complete: bool = False
    """True if every pickle asked for was decoded to its STOP within the limits."""
    first_pickle_ops: list[tuple[str, Any]] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        return {
            "pickle_protocol": self.protocol,
            "pickle_imports": list(self.imports),
            "pickle_imports_truncated": self.imports_truncated,
            "pickle_scan_complete": self.complete,
            "pickle_scanned_bytes": self.scanned_bytes,
        }


class PickleScanError(Exception):
    """The opcode stream is malformed before any scan limit was reached."""


def is_pickle_start(start: bytes) -> bool:
    """Protocol 2+ pickles always begin with the PROTO opcode and a known protocol number."""
    return len(start) >= 2 and start[0] == PROTO and start[1] in PICKLE_PROTOCOLS


def looks_like_early_protocol_pickle(source: ByteSource) -> PickleScan | None:
    """Conservative test for protocol 0/1 pickles, which have no header.

    Accepted only if the first opcode is a plausible container/class start and the prefix
    decodes cleanly: to STOP, or through many opcodes when the file outlasts the scan.
    """
    start = source.prefix(1)
    if not start or start[0] not in _PROTOCOL_0_STARTS:
        return None
    try:
        scan = scan_source(source, 1)
    except PickleScanError:
        return None
    if scan.complete or scan.opcodes >= _MIN_OPS_FOR_UNFINISHED:
        return scan
    return None


def scan_source(source: ByteSource, pickles: int, offset: int = 0) -> PickleScan:
    """Scan the first ``pickles`` pickles from ``offset`` on, within the scan limits."""
    available = max(0, source.size - offset)
    length = min(available, MAX_SCAN_BYTES)
    data = source.read(offset, length, "pickle")
    return scan_bytes(data, more_follows=available > length, pickles=pickles)


def scan_bytes(data: bytes, more_follows: bool, pickles: int = 1) -> PickleScan:
    """Scan concatenated pickles in ``data``; ``more_follows`` says the real stream is longer."""
    stream = _PrefixStream(data, more_follows)
    tracker = _ImportTracker()
    scan = PickleScan()
    try:
        for index in range(pickles):
            if index > 0 and stream.at_end():
                break
            _scan_one(stream, tracker, scan, record_ops=index == 0)
            scan.pickles += 1
        scan.complete = True
    except _ScanLimitReached:
        scan.complete = False
    except _SCAN_ERRORS as exc:
        raise PickleScanError(_first_line(exc)) from None
    except RecursionError:
        raise PickleScanError("opcode stream nests too deeply") from None
    scan.imports = tracker.sorted_imports()
    scan.imports_truncated = tracker.truncated
    scan.scanned_bytes = stream.tell()
    return scan


def inspect_pickle(source: ByteSource) -> tuple[str, dict[str, Any]]:
    """Kind (``pickle`` or legacy ``pytorch``) and details of a file starting with PROTO."""
    try:
        scan = scan_source(source, 1)
        if not _is_legacy_torch_magic(scan.first_pickle_ops):
            return "pickle", scan.details()
        # Legacy torch files are several pickles in a row; the object's imports are in the fourth.
        scan = scan_source(source, LEGACY_TORCH_PICKLES)
    except PickleScanError as exc:
        raise source.fail(f"malformed pickle ({exc})") from None
    return "pytorch", {"container": "legacy", **scan.details()}


def torch_zip_members(names: list[str]) -> list[str]:
    """Members that mark a PyTorch zip checkpoint (``<archive>/data.pkl``)."""
    return [name for name in names if _TORCH_DATA_PKL.fullmatch(name)]


def inspect_torch_zip(source: ByteSource, names: list[str]) -> dict[str, Any]:
    """Details of a PyTorch zip checkpoint: imports of its pickles, archive layout."""
    data_pkls = torch_zip_members(names)
    prefix = data_pkls[0].split("/", 1)[0]
    pkl_members = [name for name in names if _TORCH_PKL.fullmatch(name)][:MAX_PKL_MEMBERS]
    imports: set[str] = set()
    truncated = False
    complete = True
    protocol: int | None = None
    with open_zip(source) as archive:
        for member in pkl_members:
            data = read_member_prefix(source, archive, archive.getinfo(member), MAX_SCAN_BYTES + 1)
            more = len(data) > MAX_SCAN_BYTES
            try:
                scan = scan_bytes(data[:MAX_SCAN_BYTES], more_follows=more)
            except PickleScanError as exc:
                raise source.fail(
                    f"malformed pickle in zip member {member[:80]!r} ({exc})"
                ) from None
            if member.endswith("/data.pkl"):
                protocol = scan.protocol
            imports.update(scan.imports)
            truncated = truncated or scan.imports_truncated
            complete = complete and scan.complete
    storages = [name for name in names if name.startswith(prefix + "/data/")]
    return {
        "container": "zip",
        "archive_prefix": prefix,
        "storage_records": len(storages),
        "pickle_members": pkl_members,
        "pickle_protocol": protocol,
        "pickle_imports": sorted(imports)[:MAX_IMPORTS],
        "pickle_imports_truncated": truncated or len(imports) > MAX_IMPORTS,
        "pickle_scan_complete": complete,
    }


def _scan_one(
    stream: _PrefixStream, tracker: _ImportTracker, scan: PickleScan, record_ops: bool
) -> None:
    with warnings.catch_warnings():
        # Text opcodes with odd escapes warn; hostile input must not turn that into an error.
        warnings.simplefilter("ignore")
        _scan_opcodes(stream, tracker, scan, record_ops)


def _scan_opcodes(
    stream: _PrefixStream, tracker: _ImportTracker, scan: PickleScan, record_ops: bool
) -> None:
    for opcode, arg, _pos in pickletools.genops(cast(IO[bytes], stream)):
        scan.opcodes += 1
        if scan.opcodes > MAX_SCAN_OPS:
            raise _ScanLimitReached
        if record_ops and len(scan.first_pickle_ops) < 4:
            scan.first_pickle_ops.append((opcode.name, arg))
        if opcode.name == "PROTO" and scan.protocol is None:
            scan.protocol = arg if isinstance(arg, int) else None
        tracker.observe(opcode, arg)


def _is_legacy_torch_magic(ops: list[tuple[str, Any]]) -> bool:
    values = [(name, arg) for name, arg in ops if name not in ("PROTO", "FRAME")]
    return (
        len(values) == 2
        and values[0][0] in ("LONG1", "LONG4", "LONG", "INT")
        and values[0][1] == LEGACY_TORCH_MAGIC
        and values[1][0] == "STOP"
    )


class _ImportTracker:
    """Follows just enough of the stack and memo to name what STACK_GLOBAL imports."""

    def __init__(self) -> None:
        self._imports: set[str] = set()
        self.truncated = False
        self._recent: list[str | None] = []
        self._memo: dict[int, str | None] = {}
        self._memo_next = 0

    def observe(self, opcode: pickletools.OpcodeInfo, arg: Any) -> None:
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            module_name, _, attribute_name = str(arg).partition(" ")
            self._add(f"{module_name}.{attribute_name}")
            self._push(None)
        elif name == "STACK_GLOBAL":
            module: str | None = None
            attribute: str | None = None
            if len(self._recent) == 2:
                module, attribute = self._recent
            if isinstance(module, str) and isinstance(attribute, str):
                self._add(f"{module}.{attribute}")
            else:
                self._add("<unresolved STACK_GLOBAL>")
            self._push(None)
        elif name in _STRING_OPS:
            self._push(arg if isinstance(arg, str) else None)
        elif name in _GET_OPS:
            self._push(self._memo.get(int(arg)) if isinstance(arg, int) else None)
        elif name == "MEMOIZE":
            self._memo[self._memo_next] = self._top()
            self._memo_next += 1
        elif name in _PUT_OPS:
            if isinstance(arg, int):
                self._memo[arg] = self._top()
                self._memo_next = max(self._memo_next, arg + 1)
        elif name not in _NO_PUSH_OPS:
            self._push(None)

    def sorted_imports(self) -> list[str]:
        return sorted(self._imports)

    def _add(self, dotted: str) -> None:
        if dotted in self._imports:
            return
        if len(self._imports) >= MAX_IMPORTS:
            self.truncated = True
            return
        self._imports.add(dotted[:512])

    def _push(self, value: str | None) -> None:
        self._recent.append(value)
        if len(self._recent) > 2:
            del self._recent[0]

    def _top(self) -> str | None:
        return self._recent[-1] if self._recent else None


class _ScanLimitReached(Exception):
    """The scan ran into its byte or opcode budget (not a malformation)."""


class _PrefixStream:
    """The scanned prefix as a file for ``genops``.

    Reading past the prefix while the real stream goes on ends the scan (a limit, not a
    malformation); reading past the real end returns short, so ``genops`` reports truncation.
    """

    def __init__(self, data: bytes, more_follows: bool) -> None:
        self._data = data
        self._more = more_follows
        self._pos = 0

    def read(self, length: int = -1) -> bytes:
        if length is None or length < 0:
            length = len(self._data) - self._pos
        end = self._pos + length
        if end > len(self._data) and self._more:
            raise _ScanLimitReached
        chunk = self._data[self._pos : end]
        self._pos += len(chunk)
        return chunk

    def readline(self) -> bytes:
        newline = self._data.find(b"\n", self._pos)
        if newline < 0:
            if self._more:
                raise _ScanLimitReached
            newline = len(self._data) - 1
        chunk = self._data[self._pos : newline + 1]
        self._pos += len(chunk)
        return chunk

    def tell(self) -> int:
        return self._pos

    def at_end(self) -> bool:
        return self._pos >= len(self._data) and not self._more


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return (text.splitlines()[0] if text else type(exc).__name__)[:120]
