"""FileStorage keeps the meaning of the Storage protocol: it agrees with
MemoryStorage on every sequence of calls, across reopens and crashes, and
its two-phase snapshot API works off the loop thread."""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.raft.messages import Entry, HardState, Snapshot, SnapshotMeta
from node.storage import FileStorage, InitialState, MemoryStorage, Storage, StorageError
from raftctl.bench import storage as storage_bench


def _image(meta: SnapshotMeta) -> bytes:
    """Raft: one (index, term) names one state, so one image per meta."""
    return b"image-%d-%d" % (meta.index, meta.term)


def _memory_from(state: InitialState, snap: Snapshot) -> MemoryStorage:
    ms = MemoryStorage()
    ms.apply_snapshot(snap)
    ms.append(state.entries)
    ms.set_hard_state(state.hard_state)
    return ms


def _same_outcome(fs: Storage, ms: Storage, method: str, *args: object) -> None:
    """Both storages accept the call, or both refuse it with StorageError."""
    errors = []
    for s in (ms, fs):
        try:
            getattr(s, method)(*args)
            errors.append(False)
        except StorageError:
            errors.append(True)
    assert errors[0] == errors[1], f"memory raised: {errors[0]}, file raised: {errors[1]}"


OPS = ["append", "append", "append", "hard_state", "apply_snapshot", "create_snapshot",
       "two_phase", "orphan", "sync", "reopen", "crash"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_file_storage_agrees_with_memory_storage(data: st.DataObject) -> None:
    """After any sequence of appends (with conflicting suffixes), hard states,
    leader and local snapshots, reopens and crashes, FileStorage and
    MemoryStorage give the same initial_state() and snapshot(); a crash loses
    exactly what was not synced."""
    seg = data.draw(st.sampled_from([48, 160, 1 << 20]), label="segment_bytes")
    with tempfile.TemporaryDirectory() as d:
        fs = FileStorage(d, fsync="never", segment_bytes=seg)
        ms = MemoryStorage()
        synced = (ms.initial_state(), ms.snapshot())
        try:
            for _ in range(data.draw(st.integers(1, 40), label="steps")):
                init = ms.initial_state()
                base = init.snapshot.index
                last = base + len(init.entries)

                def term_at(i: int, init: InitialState = init, base: int = base) -> int:
                    return init.entries[i - base - 1].term if i > base else init.snapshot.term

                op = data.draw(st.sampled_from(OPS))
                if op == "append":
                    first = data.draw(st.integers(base + 1, last + 1), label="first")
                    n = data.draw(st.integers(1, 4), label="n")
                    term = data.draw(st.integers(1, 4), label="term")
                    ents = [Entry(term, first + k, data=b"%d.%d" % (term, first + k))
                            for k in range(n)]
                    _same_outcome(fs, ms, "append", ents)
                elif op == "hard_state":
                    hs = HardState(data.draw(st.integers(0, 5)),
                                   data.draw(st.sampled_from([None, "n1", "n2"])),
                                   data.draw(st.integers(0, last)))
                    _same_outcome(fs, ms, "set_hard_state", hs)
                elif op == "apply_snapshot":
                    index = data.draw(st.integers(base, last + 3), label="snap_index")
                    match = index <= last and data.draw(st.booleans(), label="match")
                    term = term_at(index) if match else data.draw(st.integers(1, 5))
                    snap = Snapshot(SnapshotMeta(index, term), _image(SnapshotMeta(index, term)))
                    _same_outcome(fs, ms, "apply_snapshot", snap)
                elif op in ("create_snapshot", "two_phase", "orphan"):
                    index = data.draw(st.integers(max(0, base - 1), last + 1), label="snap_index")
                    valid = base <= index <= last and data.draw(st.integers(0, 5)) > 0
                    term = term_at(index) if valid else data.draw(st.integers(0, 5))
                    meta = SnapshotMeta(index, term)
                    if op == "create_snapshot":
                        _same_outcome(fs, ms, "create_snapshot", meta, _image(meta))
                    elif op == "two_phase":
                        fs.write_snapshot_file(meta, _image(meta))
                        ms.write_snapshot_file(meta, _image(meta))
                        _same_outcome(fs, ms, "install_local_snapshot", meta)
                    else:
                        # Written off the loop, never installed: must change nothing.
                        fs.write_snapshot_file(meta, _image(meta))
                elif op == "sync":
                    fs.sync()
                    synced = (ms.initial_state(), ms.snapshot())
                elif op == "reopen":
                    fs.close()
                    fs = FileStorage(d, fsync="never", segment_bytes=seg)
                    synced = (ms.initial_state(), ms.snapshot())
                else:
                    fs.abandon()
                    fs = FileStorage(d, fsync="never", segment_bytes=seg)
                    ms = _memory_from(*synced)
                    snaps = list(Path(d).glob("snap-*"))
                    assert len(snaps) == (1 if synced[1] != Snapshot(SnapshotMeta(), b"") else 0)
                assert fs.initial_state() == ms.initial_state(), f"after {op}"
                assert fs.snapshot() == ms.snapshot(), f"after {op}"
        finally:
            fs.close()
        fs = FileStorage(d, fsync="never", segment_bytes=seg)
        assert fs.initial_state() == ms.initial_state(), "after the final reopen"
        assert fs.snapshot() == ms.snapshot(), "after the final reopen"
        fs.close()


def test_write_snapshot_file_runs_on_another_thread_while_the_log_grows(
    tmp_path: Path,
) -> None:
    """The slow half writes the image while the loop appends; the fast half then
    compacts, keeping the entries appended meanwhile."""
    fs = FileStorage(tmp_path)
    fs.append([Entry(1, i, data=b"e%d" % i) for i in range(1, 101)])
    fs.sync()
    meta = SnapshotMeta(80, 1)
    image = bytes(range(256)) * 4096
    written: list[str] = []
    writer = threading.Thread(target=lambda: written.append(fs.write_snapshot_file(meta, image)))
    writer.start()
    for i in range(101, 201):
        fs.append([Entry(1, i)])
        fs.sync()
    writer.join(timeout=60)
    assert written, "write_snapshot_file did not finish within 60 s"
    assert Path(written[0]).is_file()
    assert fs.snapshot() == Snapshot(SnapshotMeta(), b""), "the image is not the snapshot yet"
    fs.install_local_snapshot(meta)
    fs.sync()
    assert fs.snapshot() == Snapshot(meta, image)
    assert [e.index for e in fs.initial_state().entries] == list(range(81, 201))
    fs.close()
    fs = FileStorage(tmp_path)
    assert fs.snapshot() == Snapshot(meta, image)
    assert [e.index for e in fs.initial_state().entries] == list(range(81, 201))
    fs.close()


def test_install_without_a_written_image_is_refused(tmp_path: Path) -> None:
    """install_local_snapshot needs the image from write_snapshot_file first."""
    fs = FileStorage(tmp_path)
    fs.append([Entry(1, 1), Entry(1, 2)])
    with pytest.raises(StorageError, match="no snapshot file"):
        fs.install_local_snapshot(SnapshotMeta(2, 1))
    ms = MemoryStorage()
    ms.append([Entry(1, 1), Entry(1, 2)])
    with pytest.raises(StorageError, match="no snapshot image"):
        ms.install_local_snapshot(SnapshotMeta(2, 1))
    fs.close()


def test_memory_storage_two_phase_equals_create_snapshot() -> None:
    """MemoryStorage's two phases end where create_snapshot ends."""
    a, b = MemoryStorage(), MemoryStorage()
    for s in (a, b):
        s.append([Entry(1, i) for i in range(1, 6)])
    meta = SnapshotMeta(3, 1)
    a.create_snapshot(meta, b"img")
    b.write_snapshot_file(meta, b"img")
    b.install_local_snapshot(meta)
    assert (a.initial_state(), a.snapshot()) == (b.initial_state(), b.snapshot())


def test_snapshot_image_is_read_in_ranges_from_its_file(tmp_path: Path) -> None:
    """After a reopen the image comes from its file, in ranges, and nothing
    of it is kept in memory between calls."""
    fs = FileStorage(tmp_path)
    fs.append([Entry(1, 1), Entry(1, 2)])
    image = bytes(range(256)) * 40
    fs.create_snapshot(SnapshotMeta(2, 1), image)
    fs.close()
    fs = FileStorage(tmp_path)
    assert fs.snapshot_meta() == SnapshotMeta(2, 1)
    assert fs.snapshot_image_size() == len(image)
    got = b"".join(fs.read_snapshot_image(off, 1000) for off in range(0, len(image), 1000))
    assert got == image
    assert fs.read_snapshot_image(len(image), 10) == b""
    assert fs.snapshot() == Snapshot(SnapshotMeta(2, 1), image)
    assert not hasattr(fs, "_snap"), "no image may be cached"
    fs.close()


def test_snapshot_image_damaged_after_open_fails_its_crc_when_read_to_the_end(
        tmp_path: Path) -> None:
    """A leader reads its image in ranges to send it: damage found after the
    node started is reported, by file and offset, once the last range is read."""
    fs = FileStorage(tmp_path)
    fs.append([Entry(1, 1)])
    fs.create_snapshot(SnapshotMeta(1, 1), b"state" * 1000)
    fs.sync()
    fs.close()
    fs = FileStorage(tmp_path)
    snap = next(tmp_path.glob("snap-*"))
    raw = bytearray(snap.read_bytes())
    raw[100] ^= 0xFF
    snap.write_bytes(bytes(raw))
    fs.read_snapshot_image(0, 4000)
    with pytest.raises(StorageError, match=r"fails its CRC.*at byte"):
        fs.read_snapshot_image(4000, 4000)
    fs.close()


def test_snapshot_view_reads_the_file_where_it_cannot_be_mapped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a file system that cannot map files (FUSE ones), the image a node
    starts from is read instead, and still checked against its CRC."""
    import mmap

    fs = FileStorage(tmp_path)
    fs.append([Entry(1, 1)])
    fs.create_snapshot(SnapshotMeta(1, 1), b"state" * 1000)
    fs.close()

    def no_mapping(*args: object, **kwargs: object) -> mmap.mmap:
        raise OSError(19, "No such device")

    monkeypatch.setattr(mmap, "mmap", no_mapping)
    fs = FileStorage(tmp_path)
    view = fs.snapshot_view()
    assert view is not None
    with view:
        assert bytes(view.data) == b"state" * 1000
    fs.close()
    (path,) = tmp_path.glob("snap-*")
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(raw)
    with pytest.raises(StorageError, match="fails its CRC"):
        FileStorage(tmp_path)


def test_corrupt_snapshot_file_stops_the_start(tmp_path: Path) -> None:
    """A damaged image is never loaded: the error names the file and the remedy."""
    fs = FileStorage(tmp_path)
    fs.append([Entry(1, 1)])
    fs.create_snapshot(SnapshotMeta(1, 1), b"state" * 100)
    fs.close()
    (path,) = tmp_path.glob("snap-*")
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(raw)
    with pytest.raises(StorageError, match=path.name) as err:
        FileStorage(tmp_path)
    assert "data directory" in str(err.value)


def test_older_leader_snapshot_is_refused(tmp_path: Path) -> None:
    """FileStorage refuses to go back to a snapshot older than the stored one."""
    fs = FileStorage(tmp_path)
    fs.apply_snapshot(Snapshot(SnapshotMeta(10, 2), b"new"))
    with pytest.raises(StorageError, match="older"):
        fs.apply_snapshot(Snapshot(SnapshotMeta(5, 1), b"old"))
    fs.close()


def test_a_directory_is_used_by_one_storage_at_a_time(tmp_path: Path) -> None:
    """A second open of the same directory fails until the first is closed."""
    fs = FileStorage(tmp_path)
    with pytest.raises(StorageError, match="in use"):
        FileStorage(tmp_path)
    fs.close()
    FileStorage(tmp_path).close()


def test_unknown_fsync_policy_is_refused(tmp_path: Path) -> None:
    """Only "always" and "never" are fsync policies."""
    with pytest.raises(ValueError, match="fsync"):
        FileStorage(tmp_path, fsync="sometimes")


def test_non_contiguous_append_is_refused(tmp_path: Path) -> None:
    """A batch with a hole in its indices never reaches the WAL."""
    fs = FileStorage(tmp_path)
    with pytest.raises(StorageError, match="contiguous"):
        fs.append([Entry(1, 1), Entry(1, 3)])
    assert fs.initial_state().entries == []
    fs.close()


def test_tens_of_thousands_of_entries_reopen(tmp_path: Path) -> None:
    """30 000 entries over several segments come back in order after a reopen."""
    fs = FileStorage(tmp_path, segment_bytes=1 << 20)
    for lo in range(1, 30_001, 500):
        fs.append([Entry(1, i, data=b"v" * 64) for i in range(lo, lo + 500)])
        fs.sync()
    assert len(fs.segment_paths()) > 1
    fs.close()
    fs = FileStorage(tmp_path, segment_bytes=1 << 20)
    ents = fs.initial_state().entries
    assert len(ents) == 30_000 and ents[-1].index == 30_000
    assert all(e.index == i for i, e in enumerate(ents, 1))
    fs.close()


def test_storage_bench_runs_and_reports_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The benchmark runs with tiny counts and prints every figure as JSON."""
    code = storage_bench.main(["--dir", str(tmp_path), "--syncs", "6", "--rounds", "2",
                               "--batch", "4", "--snapshot-mb", "0.01", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("raw_syncs_per_s", "one_per_sync_entries_per_s", "batch_entries_per_s",
                "one_per_sync_ratio", "batch_ratio", "snapshot_write_s"):
        assert out[key] > 0, key
    assert out["syncs"] == 6 and out["batch"] == 4
    assert list(tmp_path.iterdir()) == [], "the bench must remove its files"


def test_snapshot_named_again_keeps_its_file(tmp_path: Path) -> None:
    """Snapshots (5,1), (5,2), (5,1) in turn: the current file is never removed."""
    fs = FileStorage(tmp_path)
    fs.append([Entry(1, i) for i in range(1, 6)])
    for term in (1, 2, 1):
        fs.create_snapshot(SnapshotMeta(5, term), b"t%d" % term)
    fs.sync()
    fs.close()
    fs = FileStorage(tmp_path)
    assert fs.snapshot() == Snapshot(SnapshotMeta(5, 1), b"t1")
    assert len(list(tmp_path.glob("snap-*"))) == 1
    fs.close()


def test_overtaken_local_image_is_removed_and_a_newer_one_kept(tmp_path: Path) -> None:
    """Once a leader's snapshot is durable, an image written for an older local
    snapshot that was never installed is removed; one for a newer index stays
    for its install."""
    fs = FileStorage(tmp_path)
    fs.append([Entry(1, i) for i in range(1, 6)])
    older = Path(fs.write_snapshot_file(SnapshotMeta(3, 1), b"local"))
    newer = Path(fs.write_snapshot_file(SnapshotMeta(20, 2), b"later"))
    fs.apply_snapshot(Snapshot(SnapshotMeta(10, 2), b"leader"))
    assert older.exists(), "nothing may go before the new mark is durable"
    fs.sync()
    assert not older.exists() and newer.exists()
    fs.close()


def test_evicted_entries_are_read_back_from_the_wal(tmp_path: Path) -> None:
    """Entries evicted from memory come back from their WAL records, the
    same as they were written, across segment boundaries, an overwritten
    suffix, a snapshot and a reopen; only synced entries are evicted."""
    fs = FileStorage(tmp_path, segment_bytes=2048)
    written = [Entry(1, i, data=b"%d" % i * 20) for i in range(1, 201)]
    fs.append(written[:150])
    fs.sync()
    fs.append(written[150:170])
    # §5.3: overwritten, synced and unsynced ones alike, before the next sync.
    fs.append([Entry(2, i, data=b"new%d" % i) for i in range(140, 151)])
    fs.append([Entry(2, i, data=b"new%d" % i) for i in range(151, 201)])
    assert [e.index for e in fs.evict(190)] == list(range(1, 140)), "only what was synced"
    fs.sync()
    expect = written[:139] + [Entry(2, i, data=b"new%d" % i) for i in range(140, 201)]
    assert [e.index for e in fs.evict(190)] == list(range(140, 191))
    assert len(fs.segment_paths()) > 3
    assert fs.entries(1, 201, 1 << 30) == expect
    got = fs.entries(100, 201, 200)
    assert got == expect[99 : 99 + len(got)] and 1 <= len(got) < 10, "the byte limit holds"
    fs.create_snapshot(SnapshotMeta(120, 1), b"image")
    fs.sync()
    assert fs.entries(121, 201, 1 << 30) == expect[120:]
    assert fs.initial_state().entries == expect[120:]
    fs.close()
    fs = FileStorage(tmp_path, segment_bytes=2048)
    fs.evict(200)
    assert fs.entries(121, 201, 1 << 30) == expect[120:]
    fs.close()
    # Written and overwritten within one sync: the later record counts.
    fs = FileStorage(tmp_path / "one-sync")
    fs.append(written[:20])
    fs.append([Entry(2, i, data=b"new%d" % i) for i in range(11, 21)])
    fs.sync()
    fs.evict(20)
    assert fs.entries(1, 21, 1 << 30) == written[:10] + [
        Entry(2, i, data=b"new%d" % i) for i in range(11, 21)]
    fs.close()


def test_an_evicted_entry_damaged_on_disk_is_refused(tmp_path: Path) -> None:
    """An entry read back from the WAL is checked against its CRC: damage is
    reported by file and offset, never sent to a follower."""
    fs = FileStorage(tmp_path)
    fs.append([Entry(1, i, data=b"payload%d" % i) for i in range(1, 11)])
    fs.sync()
    fs.evict(10)
    (seg,) = fs.segment_paths()
    raw = bytearray(seg.read_bytes())
    at = raw.find(b"payload5")
    raw[at] ^= 0xFF
    seg.write_bytes(bytes(raw))
    assert fs.entries(1, 5, 1 << 30)[-1].index == 4
    with pytest.raises(StorageError, match=r"fails its CRC.*at byte"):
        fs.entries(5, 6, 1 << 30)
    fs.abandon()


def test_dead_files_are_removed_by_the_given_thread(tmp_path: Path) -> None:
    """With `remove_files_with`, the snapshot file a new one replaced and the
    dead WAL segments are unlinked by the job handed over, not in `sync`."""
    fs = FileStorage(tmp_path, segment_bytes=512)
    jobs: list[Callable[[], None]] = []
    fs.remove_files_with(jobs.append)
    fs.append([Entry(1, i, data=b"x" * 100) for i in range(1, 21)])
    fs.create_snapshot(SnapshotMeta(10, 1), b"first")
    fs.sync()
    fs.create_snapshot(SnapshotMeta(20, 1), b"second")
    fs.append([Entry(1, 21)])
    fs.sync()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in before if n.startswith("snap-")]) == 2 and jobs
    for job in jobs:
        job()
    after = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in after if n.startswith("snap-")] == [f"snap-{20:016x}-{1:016x}.snap"]
    assert len([n for n in after if n.startswith("wal-")]) < len(
        [n for n in before if n.startswith("wal-")])
    fs.close()
    assert FileStorage(tmp_path).snapshot() == Snapshot(SnapshotMeta(20, 1), b"second")
