"""The WAL on disk: framing, recovery from torn tails and corruption, group
commit, segment rollover and deletion (node/storage/wal.py through FileStorage)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
import pytest

from node.config import WAL_SEGMENT_BYTES
from node.raft.messages import Entry, HardState, Snapshot, SnapshotMeta
from node.storage import FileStorage, InitialState, StorageError
from node.storage.wal import HEADER_BYTES, PREALLOC_BYTES, SnapshotMark, Truncate, Wal


def _record_bytes(body: object) -> int:
    """Size of one framed record, computed from the format, not the code."""
    return HEADER_BYTES + 1 + len(msgspec.msgpack.encode(body))


def _entries(term: int, lo: int, hi: int, tag: bytes = b"") -> list[Entry]:
    return [Entry(term, i, data=tag + b"%d" % i) for i in range(lo, hi + 1)]


def _size(st: FileStorage) -> int:
    return st.segment_paths()[-1].stat().st_size


HS = HardState(1, "n1", 3)
A = _entries(1, 1, 6, b"a")
B5, B6, G7 = Entry(2, 5, data=b"b5"), Entry(2, 6, data=b"b6"), Entry(2, 7, data=b"g7")
SNAP = Snapshot(SnapshotMeta(4, 1), b"image")


def _history(directory: Path) -> tuple[Path, list[tuple[int, InitialState, Snapshot]]]:
    """Write a known history; return the segment and, for each record boundary
    in its tail, the state that the records up to it stand for."""
    st = FileStorage(directory, fsync="never")
    empty = Snapshot(SnapshotMeta(), b"")
    st.append(A[:5])
    st.sync()
    bounds = [(_size(st), InitialState(HardState(), SnapshotMeta(), A[:5]), empty)]
    st.append([A[5]])
    st.sync()
    bounds.append((_size(st), InitialState(HardState(), SnapshotMeta(), A), empty))
    st.set_hard_state(HS)
    st.sync()
    bounds.append((_size(st), InitialState(HS, SnapshotMeta(), A), empty))
    # One sync writes three records: the truncation marker and two entries.
    pos = _size(st)
    st.append([B5, B6])
    st.sync()
    for body, ents in ((Truncate(5), A[:4]), (B5, [*A[:4], B5]), (B6, [*A[:4], B5, B6])):
        pos += _record_bytes(body)
        bounds.append((pos, InitialState(HS, SnapshotMeta(), ents), empty))
    assert pos == _size(st), "records are not framed as length + CRC + kind + msgpack"
    st.create_snapshot(SNAP.meta, SNAP.data)
    st.sync()
    mark = SnapshotMark(SNAP.meta, 6, HS)
    assert _size(st) == pos + _record_bytes(mark)
    bounds.append((_size(st), InitialState(HS, SNAP.meta, [B5, B6]), SNAP))
    st.append([G7])
    st.sync()
    bounds.append((_size(st), InitialState(HS, SNAP.meta, [B5, B6, G7]), SNAP))
    seg = st.segment_paths()[-1]
    st.close()
    return seg, bounds


@pytest.mark.parametrize("damage", ["cut", "zero_fill"])
def test_crash_at_every_byte_keeps_exactly_the_whole_records(
    tmp_path: Path, damage: str
) -> None:
    """Cut (or zero) the segment at every byte of its last records: reopening
    holds exactly the whole records before the cut and reports what it cut;
    zeros that start at a record boundary are preallocated space."""
    seg, bounds = _history(tmp_path / "src")
    data = seg.read_bytes()
    assert len(data) == bounds[-1][0]
    for cut in range(bounds[0][0], len(data) + 1):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(seg.parent, d)
        tail = b"" if damage == "cut" else bytes(len(data) - cut)
        (d / seg.name).write_bytes(data[:cut] + tail)
        end, state, snap = max((b for b in bounds if b[0] <= cut), key=lambda b: b[0])
        st = FileStorage(d, fsync="never")
        try:
            assert st.initial_state() == state, f"cut at {cut}: wrong state"
            assert st.snapshot() == snap, f"cut at {cut}: wrong snapshot"
            # Zeros are preallocated space, not damage: what is reported is
            # the torn bytes before them.
            torn = len(data[:cut].rstrip(b"\0")) - end
            assert st.recovery.truncated_bytes == max(torn, 0), f"cut at {cut}"
            size = (d / seg.name).stat().st_size
            left = cut if damage == "cut" else len(data)
            assert size == (end if torn > 0 else left), f"cut at {cut}: size {size}"
            snaps = sorted(p.name for p in d.glob("snap-*"))
            assert len(snaps) == (1 if snap.meta.index else 0), f"cut at {cut}: {snaps}"
        finally:
            st.close()


def test_reopened_after_a_cut_the_wal_takes_new_records(tmp_path: Path) -> None:
    """After a torn tail is cut, new records follow the last whole one and survive."""
    seg, _ = _history(tmp_path)
    seg.write_bytes(seg.read_bytes()[:-3])
    st = FileStorage(tmp_path, fsync="never")
    st.append([Entry(3, 7, data=b"new")])
    st.close()
    st = FileStorage(tmp_path, fsync="never")
    assert st.recovery.truncated_bytes == 0
    assert st.initial_state().entries == [B5, B6, Entry(3, 7, data=b"new")]
    st.close()


def _many_records(directory: Path) -> tuple[Path, list[int]]:
    """Ten entry records, one per sync; returns the segment and record starts."""
    st = FileStorage(directory, fsync="never")
    starts = []
    for e in _entries(1, 1, 10):
        starts.append(_size(st))
        st.append([e])
        st.sync()
    starts.append(_size(st))
    seg = st.segment_paths()[-1]
    st.close()
    return seg, starts


def test_flipped_byte_in_the_middle_stops_the_start_naming_file_and_offset(
    tmp_path: Path,
) -> None:
    """Any damaged byte of a record that has records after it is corruption: the
    storage refuses to open and says which file, which byte, and what to do."""
    seg, starts = _many_records(tmp_path)
    data = seg.read_bytes()
    lo, hi = starts[4], starts[5]
    for pos in range(lo, hi):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        seg.write_bytes(bad)
        with pytest.raises(StorageError) as err:
            FileStorage(tmp_path, fsync="never")
        msg = str(err.value)
        assert str(seg) in msg and f"at byte {lo}" in msg, f"flip at {pos}: {msg}"
        assert "data directory" in msg and "snapshot" in msg, f"no remedy in: {msg}"
    seg.write_bytes(data)
    st = FileStorage(tmp_path, fsync="never")
    assert len(st.initial_state().entries) == 10
    st.close()


def test_flipped_byte_in_the_last_record_is_cut_as_a_torn_tail(tmp_path: Path) -> None:
    """Damage anywhere in the last record (length, CRC or payload) loses only
    that record, which was never acknowledged."""
    seg, starts = _many_records(tmp_path)
    data = seg.read_bytes()
    lo, hi = starts[9], starts[10]
    for pos in range(lo, hi):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        seg.write_bytes(bad)
        st = FileStorage(tmp_path, fsync="never")
        try:
            assert st.initial_state().entries == _entries(1, 1, 9), f"flip at {pos}"
            assert st.recovery.truncated_bytes == hi - lo, f"flip at {pos}"
            assert st.recovery.offset == lo and st.recovery.file == str(seg)
        finally:
            st.close()


def test_torn_tail_is_reported_with_its_size(tmp_path: Path) -> None:
    """Cutting a torn tail reports the bytes cut and the file (the node logs
    them as `wal_tail_truncated`)."""
    seg, starts = _many_records(tmp_path)
    seg.write_bytes(seg.read_bytes()[: starts[10] - 2])
    st = FileStorage(tmp_path, fsync="never")
    st.close()
    assert st.recovery.truncated_bytes == starts[10] - 2 - starts[9]
    assert st.recovery.file == str(seg)


def test_damage_at_the_end_of_an_older_segment_is_corruption(tmp_path: Path) -> None:
    """Only the last segment may have a torn tail: earlier ones were synced whole."""
    st = FileStorage(tmp_path, fsync="never", segment_bytes=64)
    for e in _entries(1, 1, 12):
        st.append([e])
        st.sync()
    first = st.segment_paths()[0]
    assert len(st.segment_paths()) > 2
    st.close()
    first.write_bytes(first.read_bytes()[:-1])
    with pytest.raises(StorageError, match=first.name):
        FileStorage(tmp_path, fsync="never", segment_bytes=64)


def test_missing_segment_is_corruption(tmp_path: Path) -> None:
    """A segment missing between two others stops the start."""
    st = FileStorage(tmp_path, fsync="never", segment_bytes=64)
    for e in _entries(1, 1, 12):
        st.append([e])
        st.sync()
    middle = st.segment_paths()[1]
    st.close()
    middle.unlink()
    with pytest.raises(StorageError, match="missing"):
        FileStorage(tmp_path, fsync="never", segment_bytes=64)


def test_one_write_and_one_fdatasync_per_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: a sync() of many buffered records costs one write() and one
    fdatasync(); a sync() with nothing buffered costs none."""
    st = FileStorage(tmp_path, fsync="always")
    calls: list[str] = []
    real_write, real_sync = os.write, os.fdatasync

    def write(fd: int, data: bytes) -> int:
        calls.append("write")
        return real_write(fd, data)

    def fdatasync(fd: int) -> None:
        calls.append("fdatasync")
        real_sync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    st.append(_entries(1, 1, 100))
    st.set_hard_state(HardState(1, "n1", 50))
    st.append(_entries(2, 90, 120))
    assert calls == [], "records must wait in the buffer until sync()"
    st.sync()
    assert calls == ["write", "fdatasync"]
    st.sync()
    assert calls == ["write", "fdatasync"]
    st.close()


def test_fsync_never_skips_fdatasync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With fsync="never" a sync() writes but never fsyncs."""
    st = FileStorage(tmp_path, fsync="never", segment_bytes=64)
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    monkeypatch.setattr(os, "fsync", synced.append)
    st.append(_entries(1, 1, 30))
    st.create_snapshot(SnapshotMeta(20, 1), b"img")
    st.sync()
    assert synced == []
    st.close()


def test_segments_roll_over_at_the_size_limit(tmp_path: Path) -> None:
    """No segment grows past the limit unless one record alone is bigger; a
    batch that spans segments survives a reopen whole."""
    limit = 200
    st = FileStorage(tmp_path, fsync="never", segment_bytes=limit)
    st.append(_entries(1, 1, 40, b"x" * 10))
    st.sync()
    big = Entry(1, 41, data=b"y" * 500)
    st.append([big])
    st.sync()
    st.append(_entries(1, 42, 45))
    st.sync()
    sizes = [p.stat().st_size for p in st.segment_paths()]
    assert len(sizes) > 5
    oversized = [s for s in sizes if s > limit]
    assert oversized == [_record_bytes(big)], sizes
    want = st.initial_state()
    st.close()
    st = FileStorage(tmp_path, fsync="never", segment_bytes=limit)
    assert st.initial_state() == want
    assert len(want.entries) == 45
    st.close()


def test_segments_wholly_below_a_durable_snapshot_are_deleted(tmp_path: Path) -> None:
    """After a snapshot's mark is synced, the segments holding only entries it
    covers are deleted, the rest kept, the old snapshot file removed; a
    reopen recovers the same state."""
    st = FileStorage(tmp_path, fsync="always", segment_bytes=128)
    st.append(_entries(1, 1, 60))
    st.set_hard_state(HardState(1, "n1", 60))
    st.sync()
    before = st.segment_paths()
    st.create_snapshot(SnapshotMeta(10, 1), b"first")
    assert st.segment_paths() == before, "nothing may go before the mark is durable"
    st.sync()
    st.create_snapshot(SnapshotMeta(40, 1), b"second")
    st.sync()
    after = st.segment_paths()
    gone = [p for p in before if p not in after]
    assert gone and not any(p.exists() for p in gone)
    assert after[0] in before, "the segment holding entry 41 must stay"
    assert [p.name for p in tmp_path.glob("snap-*")] == [
        "snap-0000000000000028-0000000000000001.snap"]
    want = st.initial_state()
    assert [e.index for e in want.entries] == list(range(41, 61))
    st.close()
    st = FileStorage(tmp_path, fsync="always", segment_bytes=128)
    assert st.initial_state() == want
    assert st.snapshot() == Snapshot(SnapshotMeta(40, 1), b"second")
    st.close()


def test_snapshot_dropping_the_whole_log_frees_every_old_segment(tmp_path: Path) -> None:
    """A leader's snapshot past the log leaves only the current segment."""
    st = FileStorage(tmp_path, fsync="never", segment_bytes=100)
    st.append(_entries(1, 1, 30))
    st.sync()
    st.apply_snapshot(Snapshot(SnapshotMeta(100, 3), b"leader"))
    st.append([Entry(3, 101)])
    st.sync()
    assert len(st.segment_paths()) == 1
    st.close()
    st = FileStorage(tmp_path, fsync="never", segment_bytes=100)
    assert st.initial_state() == InitialState(HardState(), SnapshotMeta(100, 3), [Entry(3, 101)])
    st.close()


def test_a_failed_write_is_never_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a write fails for any reason but a full disk, every later sync()
    raises: a half-written batch or a failed fsync must not be papered over
    by a retry."""
    import errno

    st = FileStorage(tmp_path, fsync="always")
    st.append([Entry(1, 1)])

    def broken(fd: int, data: bytes) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", broken)
    with pytest.raises(StorageError, match="Input/output"):
        st.sync()
    monkeypatch.undo()
    with pytest.raises(StorageError, match="failed earlier"):
        st.sync()
    st.abandon()


def test_a_write_refused_for_space_is_kept_cut_and_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that finds the disk full after writing part of a batch: the
    part is cut off the file, the batch stays buffered, sync() raises
    NoSpace, and the next sync() writes it whole."""
    import errno

    from node.storage import NoSpace

    st = FileStorage(tmp_path, fsync="always")
    st.append([Entry(1, 1, data=b"a" * 100)])
    st.sync()
    first = st.segment_paths()[-1].read_bytes().rstrip(b"\0")
    st.append(_entries(1, 2, 40, b"b" * 100))
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if len(data) > 1000:
            real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(NoSpace, match="No space"):
        st.sync()
    monkeypatch.undo()
    assert st.space_error is not None
    assert st.segment_paths()[-1].read_bytes() == first, "part of the batch stayed in the file"
    st.sync()
    st.close()
    again = FileStorage(tmp_path, fsync="always")
    assert [e.index for e in again.initial_state().entries] == list(range(1, 41))
    assert again.recovery.truncated_bytes == 0
    again.close()


def test_dead_segments_and_snapshot_files_go_with_the_sync_of_the_new_mark(
        tmp_path: Path) -> None:
    """The segments and snapshot files that a new snapshot mark makes dead go
    in the sync that makes the mark durable, not before it."""
    from node.storage.snapfile import snapshot_files

    st = FileStorage(tmp_path, fsync="always", segment_bytes=4096)
    index = 0
    for _ in range(5):
        st.append(_entries(1, index + 1, index + 100, b"x" * 40))
        index += 100
        st.sync()
        meta = SnapshotMeta(index, 1)
        st.write_snapshot_file(meta, b"image")
        st.install_local_snapshot(meta)
    kept_segments, kept_snaps = len(st.segment_paths()), len(snapshot_files(tmp_path))
    assert kept_snaps > 1, "a mark not yet synced must not drop the snapshot before it"
    st.sync()
    assert len(st.segment_paths()) < kept_segments, "dead segments stay after the sync"
    assert len(snapshot_files(tmp_path)) == 1, "replaced snapshot files stay after the sync"
    st.close()
    again = FileStorage(tmp_path, fsync="always", segment_bytes=4096)
    assert again.initial_state().snapshot.index == index
    again.close()


def test_a_preallocated_segment_reopens_clean_and_takes_new_records(tmp_path: Path) -> None:
    """With fsync on, the segment's blocks are reserved ahead (its file is
    longer than its records, in zeros): a reopen reports nothing cut, and
    new records land right after the old ones, not after the zeros."""
    st = FileStorage(tmp_path, fsync="always")
    st.append(_entries(1, 1, 50, b"x" * 30))
    st.sync()
    seg = st.segment_paths()[-1]
    assert seg.stat().st_size == PREALLOC_BYTES, "the segment was not preallocated"
    st.close()
    for lo, hi in ((51, 80), (81, 90)):
        st = FileStorage(tmp_path, fsync="always")
        assert st.recovery.truncated_bytes == 0, "preallocated zeros taken for a torn tail"
        assert [e.index for e in st.initial_state().entries] == list(range(1, lo))
        st.append(_entries(1, lo, hi, b"y"))
        st.sync()
        st.close()
    st = FileStorage(tmp_path, fsync="always")
    assert [e.index for e in st.initial_state().entries] == list(range(1, 91))
    assert st.segment_paths() == [seg] and seg.stat().st_size == PREALLOC_BYTES
    st.close()


def test_a_torn_record_in_preallocated_space_is_cut_and_only_it_is_reported(
        tmp_path: Path) -> None:
    """A crash mid-write leaves part of a record followed by zeros: the
    reopen cuts it and reports its bytes, not the zeros after it."""
    st = FileStorage(tmp_path, fsync="always")
    st.append(_entries(1, 1, 10))
    st.sync()
    seg = st.segment_paths()[-1]
    st.close()
    wal, replay = Wal.open(tmp_path, sync=False, segment_bytes=WAL_SEGMENT_BYTES)
    wal.abandon()
    path, off = replay.where(len(replay.records) - 1)
    end = off + HEADER_BYTES + int.from_bytes(path.read_bytes()[off : off + 4], "little")
    with open(seg, "r+b") as f:
        f.seek(end)
        f.write(b"\x40\x00\x00\x00torn")
    st = FileStorage(tmp_path, fsync="always")
    assert st.recovery.truncated_bytes == 8
    assert st.recovery.offset == end
    assert [e.index for e in st.initial_state().entries] == list(range(1, 11))
    st.close()


def test_a_rolled_segment_keeps_no_zero_tail(tmp_path: Path) -> None:
    """A segment is cut back to its records when the next one starts, so
    only the newest segment holds preallocated space."""
    st = FileStorage(tmp_path, fsync="always", segment_bytes=4096)
    for k in range(40):
        st.append(_entries(1, 10 * k + 1, 10 * k + 10, b"z" * 40))
        st.sync()
    *closed, current = st.segment_paths()
    assert len(closed) >= 3
    for p in closed:
        data = p.read_bytes()
        assert 0 < len(data) <= 4096 + 200, f"{p.name}: {len(data)} bytes"
        assert data[-1] != 0, f"{p.name} ends in zeros"  # its last entry's data does not
    assert current.stat().st_size == PREALLOC_BYTES
    st.close()
    again = FileStorage(tmp_path, fsync="always", segment_bytes=4096)
    assert [e.index for e in again.initial_state().entries] == list(range(1, 401))
    again.close()


@pytest.mark.parametrize("refused", ["ENOSPC", "EOPNOTSUPP"])
def test_a_refused_reservation_leaves_the_wal_working(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: str) -> None:
    """Reserving blocks ahead is an optimisation: when the filesystem refuses
    the WAL writes on without it and says why: for want of space in
    `space_error` (tried again next time), for want of support in
    `reservation_error` (never again)."""
    import errno

    code = getattr(errno, refused)

    def refuse(fd: int, offset: int, length: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", refuse)
    st = FileStorage(tmp_path, fsync="always")
    for k in range(3):
        st.append(_entries(1, 10 * k + 1, 10 * k + 10))
        st.sync()
    err = st.space_error if refused == "ENOSPC" else st.reservation_error
    assert err is not None and err.errno == code
    st.close()
    again = FileStorage(tmp_path, fsync="always")
    assert [e.index for e in again.initial_state().entries] == list(range(1, 31))
    again.close()


def test_a_reservation_refused_halfway_leaves_no_zeros_inside_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """posix_fallocate may grow the file and then fail (ENOSPC part way, or
    glibc's emulation): those zeros are cut at the next roll like any
    reserved space, so a segment that is not the last never holds them and
    the log reopens whole."""
    import errno

    def grow_then_refuse(fd: int, offset: int, length: int) -> None:
        os.ftruncate(fd, offset + length // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", grow_then_refuse)
    st = FileStorage(tmp_path, fsync="always", segment_bytes=4096)
    for k in range(40):
        st.append(_entries(1, 10 * k + 1, 10 * k + 10, b"z" * 40))
        st.sync()
    assert len(st.segment_paths()) >= 3 and st.space_error is not None
    st.close()
    again = FileStorage(tmp_path, fsync="always", segment_bytes=4096)
    assert [e.index for e in again.initial_state().entries] == list(range(1, 401))
    again.close()


def test_a_snapshot_reaches_the_disk_half_a_mebibyte_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot written in pieces is fdatasynced every 512 KiB or so, never
    holding more unsynced: a WAL fdatasync on the same disk then never waits
    behind more writeback than that (node/storage/snapfile.py)."""
    from node.raft.messages import SnapshotMeta
    from node.storage.snapfile import SNAPSHOT_SYNC_EVERY_BYTES, SnapshotWriter

    assert SNAPSHOT_SYNC_EVERY_BYTES <= 512 * 1024
    unsynced: list[int] = []
    written = [0]
    real_write, real_sync = os.write, os.fdatasync

    def write(fd: int, data: bytes | memoryview) -> int:
        n = real_write(fd, data)
        written[0] += n
        return n

    def fdatasync(fd: int) -> None:
        unsynced.append(written[0])
        written[0] = 0
        real_sync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    w = SnapshotWriter(tmp_path, SnapshotMeta(index=10, term=2), sync=True)
    piece = bytes(64 * 1024)
    for _ in range(48):  # 3 MiB
        w.write(piece)
    w.finish()
    assert len(unsynced) >= 3 * 1024 * 1024 // SNAPSHOT_SYNC_EVERY_BYTES
    assert max(unsynced) <= SNAPSHOT_SYNC_EVERY_BYTES + len(piece), unsynced
