"""Where a file is cut into the pieces a backup repository stores (deduplicates) one by one.

Safetensors files are cut along their own structure: the 8-byte length plus header JSON is
one piece, and every tensor's bytes are one piece, or fixed PIECE_SIZE pieces aligned to the
tensor's start when the tensor is larger (a header over PIECE_SIZE is cut the same way). A
fine-tune that rewrites some tensors, adds one, or reorders the header then changes only the
pieces of what changed: every untouched tensor is cut exactly as before wherever it now sits
in the file. Content-defined chunking would also find
most of them, but loses a chunk or two at each edit and cuts every tensor's edges apart.

Everything else is cut with FastCDC (min 256 KiB, avg 1 MiB, max 4 MiB), so an insertion moves
the cuts only near the insertion. The file is streamed in windows; the bytes after the last cut
that had a full `CDC_MAX` of lookahead are carried into the next window, which makes the cuts
exactly those of one pass over the whole file, whatever the window size.

No piece is longer than PIECE_SIZE, which bounds what the repository accepts and what a reader
ever has to hold for one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pyfastcdc import FastCDC

from custody.data.formats.safetensors import looks_like_safetensors, parse_header
from custody.domain.errors import CustodyError, FormatError

__all__ = ["CDC_AVG", "CDC_MAX", "CDC_MIN", "PIECE_SIZE", "WINDOW", "Piece", "cdc_pieces", "plan",
           "safetensors_plan"]

ReadAt = Callable[[int, int], bytes]

MiB = 1 << 20
PIECE_SIZE = 4 * MiB
CDC_MIN, CDC_AVG, CDC_MAX = 256 * 1024, 1 * MiB, 4 * MiB
WINDOW = 16 * MiB
_SNIFF = 64  # enough leading bytes to tell a safetensors header from anything else


@dataclass(frozen=True, slots=True)
class Piece:
    """Bytes [offset, offset + length) of one file."""

    offset: int
    length: int


def plan(read_at: ReadAt, size: int, name: str = "") -> list[Piece]:
    """The pieces of a file, in order, covering it exactly (none for an empty file).

    Reads only the header of a safetensors file, and the whole of any other file.
    """
    pieces = safetensors_plan(read_at, size, name)
    if pieces is not None:
        return pieces
    return [piece for piece, _ in cdc_pieces(read_at, size, name)]


def _fixed(offset: int, length: int) -> Iterator[Piece]:
    for start in range(0, length, PIECE_SIZE):
        yield Piece(offset + start, min(PIECE_SIZE, length - start))


def safetensors_plan(read_at: ReadAt, size: int, name: str = "") -> list[Piece] | None:
    """Pieces along tensor boundaries, or None when the file is not a valid safetensors file.

    A file that only looks like safetensors (right extension, broken header) falls back to
    content-defined chunking rather than failing: a backup copies bytes, it does not judge them.
    """
    if size < 9 or not looks_like_safetensors(read_at(0, min(size, _SNIFF)), size):
        return None
    try:
        header = parse_header(read_at, size, name)
    except FormatError:
        return None
    pieces = list(_fixed(0, header.data_start))
    for info in header.tensors.values():  # ordered by offset; they tile the data section
        pieces.extend(_fixed(header.data_start + info.begin, info.byte_length))
    return pieces


def cdc_pieces(read_at: ReadAt, size: int, name: str = "", window: int = WINDOW) -> Iterator[tuple[Piece, memoryview]]:
    """Content-defined pieces with a view of their bytes, valid until the next piece is asked for.

    At most `window` bytes are held. A cut is taken only when at least CDC_MAX bytes follow the
    piece's start in the window (or the file ends there), since FastCDC never looks further than
    that from a piece's start; the rest is carried over.
    """
    if window < 2 * CDC_MAX:
        raise ValueError(f"window must be at least {2 * CDC_MAX} bytes")
    cdc = FastCDC(avg_size=CDC_AVG, min_size=CDC_MIN, max_size=CDC_MAX)
    buf = bytearray(min(window, size))
    start = 0  # file offset of buf[0]
    held = 0  # bytes of buf that hold file data
    while start < size:
        want = min(window, size - start)
        while held < want:
            data = read_at(start + held, want - held)
            if not data:
                raise CustodyError(f"{name or 'file'} shrank while it was being read")
            buf[held : held + len(data)] = data
            held += len(data)
        at_end = start + held == size
        view = memoryview(buf)[:held]
        consumed = 0
        for cut in cdc.cut_buf(view):
            if not at_end and cut.offset + CDC_MAX > held:
                break
            yield Piece(start + cut.offset, cut.length), view[cut.offset : cut.offset + cut.length]
            consumed = cut.offset + cut.length
        buf[: held - consumed] = buf[consumed:held]  # same length: no resize under exported views
        held -= consumed
        start += consumed
