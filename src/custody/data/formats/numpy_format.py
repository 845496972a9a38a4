"""Read ``.npy`` headers and ``.npz`` member headers without loading arrays.

An ``.npy`` header is a Python dict literal; it is size-checked before ``ast.literal_eval``
(which evaluates literals only, never code). Arrays whose dtype holds Python objects are
stored as a pickle and can only be loaded with ``allow_pickle=True``, so they are reported
unsafe; their payload is scanned statically, never loaded.
"""

from __future__ import annotations

import ast
import math
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, cast

import numpy

from custody.data.formats.pickles import PickleScanError, scan_bytes, scan_source
from custody.data.formats.source import ByteSource, ReadAt
from custody.data.formats.zip_archive import open_zip, read_member_prefix

MAGIC = b"\x93NUMPY"
PREAMBLE_BYTES = 12
"""Magic (6), version (2), header length (2 in v1, 4 in v2/v3)."""
MAX_HEADER_BYTES = 1024 * 1024
MAX_RANK = 64
MAX_NPZ_MEMBERS = 10_000
MAX_DTYPE_DEPTH = 32
_HEADER_KEYS = frozenset({"descr", "fortran_order", "shape"})


@dataclass(frozen=True)
class NpyHeader:
    version: str
    dtype: str
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int
    has_object: bool
    parameter_count: int
    data_bytes: int | None
    """Bytes of array data; ``None`` for object arrays, whose data is a pickle."""

    def details(self) -> dict[str, Any]:
        return {
            "npy_version": self.version,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "fortran_order": self.fortran_order,
            "has_object": self.has_object,
        }


@dataclass(frozen=True)
class NpzSummary:
    members: dict[str, NpyHeader] = field(default_factory=dict)

    @property
    def parameter_count(self) -> int:
        return sum(header.parameter_count for header in self.members.values())

    @property
    def has_object(self) -> bool:
        return any(header.has_object for header in self.members.values())


def is_npy_start(start: bytes) -> bool:
    return start[:6] == MAGIC


def parse_npz(read_at: ReadAt, size: int, name: str = "") -> NpzSummary:
    """Headers of every member of a ``.npz`` archive; ``FormatError`` if any is not ``.npy``."""
    source = ByteSource(read_at, size, name)
    with open_zip(source) as archive:
        names = archive.namelist()
    if not names or not all(member.endswith(".npy") for member in names):
        raise source.fail("not an npz archive (members other than .npy files)")
    return read_npz(source)


def read_npy(source: ByteSource) -> NpyHeader:
    preamble = source.prefix(PREAMBLE_BYTES)
    header_start, header_length = _preamble(preamble, source)
    raw = source.read(header_start, header_length, "npy header")
    header = _decode(preamble, raw, header_start + header_length, source)
    if header.data_bytes is not None and header.data_offset + header.data_bytes > source.size:
        raise source.fail(
            f"truncated: array data needs {header.data_bytes} bytes after the header, "
            f"{source.size - header.data_offset} present"
        )
    return header


def object_payload_details(source: ByteSource, header: NpyHeader) -> dict[str, Any]:
    """Static scan of the pickle that stores an object array (reported, never loaded)."""
    try:
        return scan_source(source, 1, offset=header.data_offset).details()
    except PickleScanError as exc:
        raise source.fail(f"malformed pickle payload of an object array ({exc})") from None


def read_npz(source: ByteSource) -> NpzSummary:
    members: dict[str, NpyHeader] = {}
    with open_zip(source) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_NPZ_MEMBERS:
            raise source.fail(f"npz archive has more than {MAX_NPZ_MEMBERS} members")
        for info in infos:
            label = f"member {info.filename[:80]!r}"
            preamble = read_member_prefix(source, archive, info, PREAMBLE_BYTES)
            header_start, header_length = _preamble(preamble, source, label)
            raw = read_member_prefix(source, archive, info, header_start + header_length)
            if len(raw) < header_start + header_length:
                raise source.fail(f"truncated npy header in {label}")
            header = _decode(
                preamble, raw[header_start:], header_start + header_length, source, label
            )
            if (
                header.data_bytes is not None
                and header.data_offset + header.data_bytes > info.file_size
            ):
                raise source.fail(f"truncated array data in {label}")
            if header.has_object:
                _check_object_member(source, archive, info, header, label)
            members[info.filename[: -len(".npy")]] = header
    return NpzSummary(members=members)


def _check_object_member(
    source: ByteSource,
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    header: NpyHeader,
    label: str,
) -> None:
    limit = header.data_offset + 4 * 1024 * 1024
    data = read_member_prefix(source, archive, info, limit + 1)
    try:
        scan_bytes(data[header.data_offset : limit], more_follows=len(data) > limit)
    except PickleScanError as exc:
        raise source.fail(f"malformed pickle payload in {label} ({exc})") from None


def _preamble(preamble: bytes, source: ByteSource, label: str = "file") -> tuple[int, int]:
    if len(preamble) < 10 or preamble[:6] != MAGIC:
        raise source.fail(f"npy {label} is too short or lacks the magic")
    major, minor = preamble[6], preamble[7]
    if major not in (1, 2, 3) or minor != 0:
        raise source.fail(f"unsupported npy version {major}.{minor} in {label}")
    if major == 1:
        (length,) = struct.unpack_from("<H", preamble, 8)
        start = 10
    else:
        if len(preamble) < 12:
            raise source.fail(f"npy {label} is too short for its header length")
        (length,) = struct.unpack_from("<I", preamble, 8)
        start = 12
    if length > MAX_HEADER_BYTES:
        raise source.fail(f"npy header of {length} bytes in {label} exceeds {MAX_HEADER_BYTES}")
    return start, length


def _decode(
    preamble: bytes, raw: bytes, data_offset: int, source: ByteSource, label: str = "file"
) -> NpyHeader:
    major = preamble[6]
    try:
        text = raw.decode("utf-8" if major >= 3 else "latin1")
    except UnicodeDecodeError:
        raise source.fail(f"npy header in {label} is not valid UTF-8") from None
    try:
        with warnings.catch_warnings():
            # Odd escapes in a hostile header warn; they must not escalate into other errors.
            warnings.simplefilter("ignore")
            value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise source.fail(f"npy header in {label} is not a Python literal") from None
    if not isinstance(value, dict) or set(value) != _HEADER_KEYS:
        raise source.fail(
            f"npy header in {label} must be a dict with descr, fortran_order and shape"
        )
    shape, fortran_order = value["shape"], value["fortran_order"]
    if not isinstance(fortran_order, bool):
        raise source.fail(f"npy fortran_order in {label} is not a bool")
    if (
        not isinstance(shape, tuple)
        or len(shape) > MAX_RANK
        or not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape)
    ):
        raise source.fail(f"npy shape in {label} is not a tuple of non-negative integers")
    dtype = _dtype(value["descr"], source, label)
    elements = math.prod(shape)
    has_object = bool(dtype.hasobject)
    return NpyHeader(
        version=f"{major}.0",
        dtype=str(dtype) if dtype.fields or dtype.subdtype else dtype.str,
        shape=shape,
        fortran_order=fortran_order,
        data_offset=data_offset,
        has_object=has_object,
        parameter_count=elements * _scalars_per_item(dtype, 0),
        data_bytes=None if has_object else elements * dtype.itemsize,
    )


def _dtype(descr: Any, source: ByteSource, label: str) -> numpy.dtype[Any]:
    """The dtype a descr denotes, via numpy's own (non-executing) descr parser."""
    from numpy.lib import format as npy_format

    if not isinstance(descr, (str, list, tuple)):
        raise source.fail(f"npy descr in {label} is not a dtype description")
    try:
        dtype = npy_format.descr_to_dtype(cast(Any, descr))
    except Exception as exc:  # numpy raises assorted types for nonsense descriptions
        raise source.fail(
            f"npy descr in {label} is not a valid dtype ({type(exc).__name__})"
        ) from None
    if not isinstance(dtype, numpy.dtype):
        raise source.fail(f"npy descr in {label} is not a valid dtype")
    return dtype


def _scalars_per_item(dtype: numpy.dtype[Any], depth: int) -> int:
    """Scalars in one array item: 1 for plain dtypes, summed over fields and sub-arrays."""
    if depth > MAX_DTYPE_DEPTH:
        return 1
    if dtype.subdtype is not None:
        base, subshape = dtype.subdtype
        return int(math.prod(subshape)) * _scalars_per_item(base, depth + 1)
    fields = dtype.fields
    if fields:
        total = 0
        for key in dtype.names or ():  # not fields.values(): titles alias their field
            total += _scalars_per_item(fields[key][0], depth + 1)
        return total
    return 1
