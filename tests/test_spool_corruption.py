"""Corruption found at open: flipped bits, torn tails, zeroed pages, empty segments, leftover
temporary files, damaged done marks. Opening always succeeds, only the damaged frames are
lost, each is counted, and the damage is moved aside into ``damaged/`` (so the next open
finds none)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import writebehind as wb
from writebehind.spool._frames import HEADER, crc32c, scan

from .spool_helpers import open_log, rec

N = 12


def build(tmp_path: Path, n: int = N) -> tuple[Path, list[tuple[int, int]]]:
    """A spool holding records 0..n-1 (seqs 1..n) in one segment; its file and frame spans."""
    with open_log(tmp_path, segment_bytes=1 << 16) as log:
        log.append_many(rec(i) for i in range(n))
    segs = sorted((tmp_path / "spool").glob("*.seg"))
    seg = max(segs, key=lambda p: p.stat().st_size)
    spans = [(f.offset, f.end) for f in scan(seg.read_bytes()).frames]
    assert len(spans) == n
    return seg, spans


def reopen(tmp_path: Path) -> tuple[list[int], wb.spool.SpoolDamage]:
    with open_log(tmp_path, segment_bytes=1 << 16) as log:
        return [s for s, _ in log.recovered()], log.damage


def test_a_flipped_bit_in_each_frame(tmp_path: Path) -> None:
    """A bit flipped in the header or the payload of any one frame loses that frame only,
    counted once; the next open finds no damage."""
    for i in range(N):
        for where in ("header", "payload"):
            d = tmp_path / f"{i}-{where}"
            seg, spans = build(d)
            start, end = spans[i]
            offset = start + (5 if where == "header" else HEADER + (end - start - HEADER) // 2)
            data = bytearray(seg.read_bytes())
            data[offset] ^= 0x04
            seg.write_bytes(bytes(data))
            seqs, damage = reopen(d)
            assert seqs == [s for s in range(1, N + 1) if s != i + 1]
            assert damage.frames == 1
            assert damage.bytes == end - start
            assert len(damage.files) == 1
            assert (d / "spool" / damage.files[0]).read_bytes() == bytes(data[start:end])
            again, damage2 = reopen(d)
            assert again == seqs
            assert damage2.frames == 0


def test_truncation_at_every_byte_of_the_last_two_frames(tmp_path: Path) -> None:
    """Cut anywhere in the last two frames: the whole frames before the cut come back, a cut
    inside a frame counts one damaged frame, a cut on a boundary none."""
    seg, spans = build(tmp_path / "orig")
    original = seg.read_bytes()
    d = tmp_path / "t"
    for cut in range(spans[-2][0], len(original)):
        (d / "spool").mkdir(parents=True, exist_ok=True, mode=0o700)
        for f in (d / "spool").iterdir():
            if f.is_file():
                f.unlink()
        (d / "spool" / seg.name).write_bytes(original[:cut])
        seqs, damage = reopen(d)
        whole = sum(1 for _, end in spans if end <= cut)
        assert seqs == list(range(1, whole + 1)), cut
        assert damage.frames == (0 if cut in {s for s, _ in spans} else 1), cut
        assert damage.bytes == cut - spans[whole][0] if whole < N else 0


def test_a_zeroed_page(tmp_path: Path) -> None:
    """A page of zeros (written out of order, then power lost) loses the frames it touches,
    each counted (from the sequence numbers missing between the good frames around it)."""
    seg, spans = build(tmp_path, n=150)
    data = bytearray(seg.read_bytes())
    page = 4096
    assert len(data) > 2 * page
    data[page : 2 * page] = bytes(page)
    seg.write_bytes(bytes(data))
    touched = {i + 1 for i, (s, e) in enumerate(spans) if s < 2 * page and e > page}
    seqs, damage = reopen(tmp_path)
    assert seqs == [s for s in range(1, 151) if s not in touched]
    assert damage.frames == len(touched)


def test_a_segment_of_garbage_and_an_empty_one(tmp_path: Path) -> None:
    """An empty segment is removed silently; one holding only garbage is moved aside; the
    other segments are untouched."""
    build(tmp_path)
    d = tmp_path / "spool"
    (d / "00000000000000000100-000050.seg").write_bytes(b"")
    (d / "00000000000000000200-000051.seg").write_bytes(os.urandom(777))
    seqs, damage = reopen(tmp_path)
    assert seqs == list(range(1, N + 1))
    assert damage.frames == 1
    assert damage.bytes == 777
    assert not (d / "00000000000000000100-000050.seg").exists()
    assert not (d / "00000000000000000200-000051.seg").exists()
    with open_log(tmp_path) as log:
        assert log.append(rec(0)) == 200  # the floor its name gave: no number is reused


def test_a_leftover_temporary_file(tmp_path: Path) -> None:
    """A .tmp file (a repair a crash interrupted) is deleted and counted."""
    build(tmp_path)
    (tmp_path / "spool" / "00000000000000000001-000000.seg.tmp").write_bytes(b"partial")
    seqs, damage = reopen(tmp_path)
    assert seqs == list(range(1, N + 1))
    assert damage.temp_files == 1
    assert not list((tmp_path / "spool").glob("*.tmp"))


def test_damaged_done_marks_deliver_again_never_lose(tmp_path: Path) -> None:
    """Garbage in a done file loses marks, so those records come back (at least once)."""
    with open_log(tmp_path, segment_bytes=1 << 16) as log:
        seqs = log.append_many(rec(i) for i in range(10))
        log.wait_durable(seqs[-1], timeout=10)
        log.done(seqs[:5])
    (done,) = (tmp_path / "spool").glob("*.done")
    data = bytearray(done.read_bytes())
    data[HEADER + 2] ^= 0xFF
    done.write_bytes(bytes(data))
    got, damage = reopen(tmp_path)
    assert got == seqs
    assert damage.done_bytes == len(data)
    assert damage.frames == 0


def test_a_valid_frame_that_does_not_decode(tmp_path: Path) -> None:
    """A frame whose checksums hold but whose payload is not the spool's JSON (a bug, or a
    hand edit) is moved aside like a damaged one."""
    seg, spans = build(tmp_path)
    data = bytearray(seg.read_bytes())
    start, end = spans[3]
    payload = b"{" + b"x" * (end - start - HEADER - 1)
    data[start + HEADER : end] = payload
    data[start + 28 : start + 32] = crc32c(payload).to_bytes(4, "little")
    data[start + 32 : start + 36] = crc32c(bytes(data[start + 4 : start + 32])).to_bytes(
        4, "little"
    )
    seg.write_bytes(bytes(data))
    seqs, damage = reopen(tmp_path)
    assert seqs == [s for s in range(1, N + 1) if s != 4]
    assert damage.frames == 1


def test_a_newer_format_refuses_with_config_error(tmp_path: Path) -> None:
    """Frames from a newer writebehind are not damage: opening says so instead of guessing."""
    seg, _ = build(tmp_path)
    data = bytearray(seg.read_bytes())
    data[4] = 9
    data[32:36] = crc32c(bytes(data[4:32])).to_bytes(4, "little")
    seg.write_bytes(bytes(data))
    with pytest.raises(wb.ConfigError, match="newer writebehind"):
        reopen(tmp_path)


def test_damage_in_one_segment_leaves_the_others(tmp_path: Path) -> None:
    """Corrupting a middle segment loses only frames there."""
    with open_log(tmp_path) as log:  # 4 KiB segments
        seqs = []
        for i in range(300):
            seqs.append(log.append(rec(i)))
            log.wait_durable(seqs[-1], timeout=10)
    segs = sorted((tmp_path / "spool").glob("*.seg"))
    assert len(segs) > 3
    victim = segs[1]
    frames = scan(victim.read_bytes()).frames
    data = bytearray(victim.read_bytes())
    data[frames[0].offset + HEADER] ^= 1
    victim.write_bytes(bytes(data))
    with open_log(tmp_path) as log:
        got = [s for s, _ in log.recovered()]
        assert got == [s for s in seqs if s != frames[0].seq]
        assert log.damage.frames == 1
