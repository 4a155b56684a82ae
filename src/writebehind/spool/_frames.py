"""The on-disk frame: encode one, and scan a file into good frames and damaged regions.

Every frame is a 36-byte header and a payload (little-endian)::

    0  magic    4  b"\\xabWB\\xf5"
    4  version  1  FORMAT (1)
    5  kind     1  RECORD (1) in segment files, DONE (2) in done files
    6  flags    2  0
    8  length   4  payload bytes
    12 seq      8  the record's sequence number (DONE: 0)
    20 time     8  wall-clock time of the append (float seconds; DONE: when written)
    28 pcrc     4  CRC32C of the payload
    32 hcrc     4  CRC32C of bytes 4..32 (version to pcrc)

The header has its own CRC so that a damaged length is never trusted: a frame whose header
checks out but whose payload runs past the end of the file is a torn write at the tail; one
whose header does not check out is garbage, and the scanner *resyncs*: it looks for the next
offset that holds a whole valid frame (magic, header CRC and payload CRC). Resync is safe
because record payloads are ASCII (the spool's JSON escapes everything else), and the magic's
first byte is not ASCII, so no record can contain something that looks like a frame; a chance
match inside binary header bytes also needs two CRCs to agree (odds about 2^-64).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import google_crc32c

__all__ = [
    "DONE",
    "FORMAT",
    "HEADER",
    "MAGIC",
    "MAX_PAYLOAD",
    "RECORD",
    "Frame",
    "Region",
    "Scan",
    "crc32c",
    "encode_frame",
    "record_frames",
    "scan",
]

MAGIC = b"\xabWB\xf5"
FORMAT = 1
RECORD = 1
DONE = 2
HEADER = 36
MAX_PAYLOAD = 1 << 30  # a length above this is never trusted, header CRC or not

_HEAD = struct.Struct("<4sBBHIQdII")
_CHECKED = struct.Struct("<BBHIQdI")  # bytes 4..32, covered by hcrc


def crc32c(data: bytes) -> int:
    """The CRC32C (Castagnoli) of ``data``."""
    return int(google_crc32c.value(data))


def encode_frame(
    kind: int, seq: int, time: float, payload: bytes, pcrc: int | None = None
) -> bytes:
    """One frame holding ``payload``; ``pcrc`` is its CRC32C when the caller has it."""
    if pcrc is None:
        pcrc = crc32c(payload)
    checked = _CHECKED.pack(FORMAT, kind, 0, len(payload), seq, time, pcrc)
    return MAGIC + checked + crc32c(checked).to_bytes(4, "little") + payload


def record_frames(first: int, time: float, payloads: list[bytes]) -> bytes:
    """Frames for ``payloads``, seqs from ``first``, all at ``time`` (the writer thread's
    work: the payloads' CRC32Cs are computed here, not by the appending thread)."""
    pack, crc, magic, fmt = _CHECKED.pack, google_crc32c.value, MAGIC, FORMAT
    parts: list[bytes] = []
    for seq, payload in enumerate(payloads, first):
        checked = pack(fmt, RECORD, 0, len(payload), seq, time, crc(payload))
        parts += (magic, checked, crc(checked).to_bytes(4, "little"), payload)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame that checked out: where it is and what it holds."""

    offset: int
    end: int
    kind: int
    seq: int
    time: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class Region:
    """Bytes ``[start, end)`` that hold no valid frame. ``torn``: they run to the end of the
    file (a write cut short); otherwise good frames follow them (corruption). ``header_ok``:
    one frame whose header checked out but whose payload did not (exactly one frame lost)."""

    start: int
    end: int
    torn: bool
    header_ok: bool


@dataclass(slots=True)
class Scan:
    """What :func:`scan` found in one file, in file order."""

    frames: list[Frame] = field(default_factory=list)
    damage: list[Region] = field(default_factory=list)
    newer_format: int | None = None  # a frame from a newer writebehind (we cannot read it)

    @property
    def damaged_bytes(self) -> int:
        return sum(r.end - r.start for r in self.damage)


_OK, _BAD, _SHORT, _PAYLOAD = range(4)


def _probe(data: bytes, pos: int) -> tuple[int, Frame | None, int]:
    """(status, frame, version) of a frame starting at ``pos``."""
    n = len(data)
    if n - pos < HEADER:
        return _SHORT, None, 0
    magic, version, kind, _flags, length, seq, time, pcrc, hcrc = _HEAD.unpack_from(data, pos)
    if magic != MAGIC or crc32c(data[pos + 4 : pos + 32]) != hcrc or length > MAX_PAYLOAD:
        return _BAD, None, 0
    if version != FORMAT:
        return _BAD, None, version
    end = pos + HEADER + length
    if end > n:
        return _SHORT, None, version
    payload = data[pos + HEADER : end]
    if crc32c(payload) != pcrc:
        return _PAYLOAD, Frame(pos, end, kind, seq, time, b""), version
    return _OK, Frame(pos, end, kind, seq, time, payload), version


def _resync(data: bytes, pos: int) -> int:
    """The offset of the next whole valid frame after ``pos``, or ``len(data)``."""
    while True:
        pos = data.find(MAGIC, pos + 1)
        if pos < 0:
            return len(data)
        status, _, _ = _probe(data, pos)
        if status == _OK:
            return pos


def scan(data: bytes) -> Scan:
    """Every valid frame in ``data`` and every damaged region between and after them."""
    out = Scan()
    pos, n = 0, len(data)
    while pos < n:
        status, frame, version = _probe(data, pos)
        if version > FORMAT:
            out.newer_format = version
        if status == _OK:
            assert frame is not None
            out.frames.append(frame)
            pos = frame.end
        elif status == _PAYLOAD:
            assert frame is not None
            out.damage.append(Region(pos, frame.end, frame.end == n, True))
            pos = frame.end
        elif status == _SHORT and _resync(data, pos) == n:
            out.damage.append(Region(pos, n, True, False))
            pos = n
        else:
            nxt = _resync(data, pos)
            out.damage.append(Region(pos, nxt, nxt == n, False))
            pos = nxt
    return out
