"""`python -m raftctl.bench.storage`: how fast `FileStorage` makes entries durable,
next to the disk's raw write+fdatasync rate, measured in one run on one disk.
A measurement tool only: nothing in the node imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from node.raft.messages import Entry, SnapshotMeta
from node.storage import FileStorage
from node.storage.wal import HEADER_BYTES

RAW_BLOCK_BYTES = 4096
# Targets against the raw 4 KiB rate: one entry per sync costs little more
# than a raw sync; a batch of 64 entries at most two raw syncs' worth of time.
TARGET_ONE_RATIO = 0.8
TARGET_BATCH_RATIO = 32.0


def _raw(path: Path, n: int, size: int) -> float:
    """Seconds for n appends of `size` bytes, each followed by fdatasync."""
    block = os.urandom(size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        t = time.perf_counter()
        for _ in range(n):
            os.write(fd, block)
            os.fdatasync(fd)
        return time.perf_counter() - t
    finally:
        os.close(fd)


def _wal(st: FileStorage, batches: list[list[Entry]]) -> float:
    """Seconds to append and sync each batch in turn."""
    t = time.perf_counter()
    for batch in batches:
        st.append(batch)
        st.sync()
    return time.perf_counter() - t


def _batches(first: int, syncs: int, per_sync: int, entry_bytes: int) -> list[list[Entry]]:
    data = os.urandom(entry_bytes)
    return [
        [Entry(1, first + k * per_sync + j, data=data) for j in range(per_sync)]
        for k in range(syncs)
    ]


def run(
    directory: Path,
    syncs: int,
    rounds: int,
    batch: int,
    entry_bytes: int,
    snapshot_mb: float,
) -> dict[str, Any]:
    """Interleave the three measurements in rounds, so that a disk whose speed
    drifts during the run affects them alike; then time one snapshot write."""
    per_round = max(1, syncs // rounds)
    sample = Entry(1, 1, data=bytes(entry_bytes))
    record_bytes = HEADER_BYTES + 1 + len(msgspec.msgpack.encode(sample))
    one = FileStorage(directory / "wal-one", fsync="always")
    many = FileStorage(directory / "wal-batch", fsync="always")
    t_raw = t_small = t_one = t_many = 0.0
    try:
        for r in range(rounds):
            t_raw += _raw(directory / "raw.bin", per_round, RAW_BLOCK_BYTES)
            t_small += _raw(directory / "raw-small.bin", per_round, record_bytes)
            t_one += _wal(one, _batches(1 + r * per_round, per_round, 1, entry_bytes))
            t_many += _wal(many, _batches(1 + r * per_round * batch, per_round, batch, entry_bytes))
        n = per_round * rounds
        image = os.urandom(int(snapshot_mb * 1024 * 1024))
        t = time.perf_counter()
        one.write_snapshot_file(SnapshotMeta(1, 1), image)
        t_snap = time.perf_counter() - t
    finally:
        one.close()
        many.close()
    raw_rate = n / t_raw
    small_rate = n / t_small
    one_rate = n / t_one
    many_rate = n * batch / t_many
    return {
        "dir": str(directory),
        "syncs": n,
        "raw_block_bytes": RAW_BLOCK_BYTES,
        "raw_syncs_per_s": raw_rate,
        "raw_sync_us": 1e6 * t_raw / n,
        "raw_record_bytes": record_bytes,
        "raw_record_syncs_per_s": small_rate,
        "entry_bytes": entry_bytes,
        "one_per_sync_entries_per_s": one_rate,
        "one_per_sync_ratio": one_rate / raw_rate,
        "one_per_sync_target": TARGET_ONE_RATIO,
        "one_per_sync_vs_raw_record": one_rate / small_rate,
        "batch": batch,
        "batch_entries_per_s": many_rate,
        "batch_ratio": many_rate / raw_rate,
        "batch_target": TARGET_BATCH_RATIO,
        "snapshot_bytes": len(image),
        "snapshot_write_s": t_snap,
        "targets_met": one_rate / raw_rate >= TARGET_ONE_RATIO
        and many_rate / raw_rate >= TARGET_BATCH_RATIO,
    }


def _render(r: dict[str, Any]) -> str:
    def verdict(ratio: float, target: float) -> str:
        return "ok" if ratio >= target else "BELOW TARGET"

    return "\n".join([
        f"directory: {r['dir']}  ({r['syncs']} syncs per measurement)",
        f"raw write+fdatasync of {r['raw_block_bytes']} B: "
        f"{r['raw_syncs_per_s']:.0f}/s ({r['raw_sync_us']:.0f} us each)",
        f"raw write+fdatasync of {r['raw_record_bytes']} B (one WAL entry record): "
        f"{r['raw_record_syncs_per_s']:.0f}/s",
        f"WAL, 1 entry of {r['entry_bytes']} B per sync: "
        f"{r['one_per_sync_entries_per_s']:.0f} entries/s = {r['one_per_sync_ratio']:.2f} x raw "
        f"(target >= {r['one_per_sync_target']}) "
        f"{verdict(r['one_per_sync_ratio'], r['one_per_sync_target'])}; "
        f"{r['one_per_sync_vs_raw_record']:.2f} x the raw record-sized rate",
        f"WAL, {r['batch']} entries of {r['entry_bytes']} B per sync: "
        f"{r['batch_entries_per_s']:.0f} entries/s = {r['batch_ratio']:.1f} x raw "
        f"(target >= {r['batch_target']}) {verdict(r['batch_ratio'], r['batch_target'])}",
        f"write_snapshot_file of {r['snapshot_bytes'] / 1e6:.1f} MB: "
        f"{r['snapshot_write_s'] * 1000:.0f} ms",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raftctl.bench.storage", description=__doc__)
    p.add_argument("--dir", type=Path, help="an existing directory on the disk to measure "
                   "(default: a temporary one in the current directory)")
    p.add_argument("--syncs", type=int, default=2000, help="syncs per measurement")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--batch", type=int, default=64, help="entries per sync in the batch run")
    p.add_argument("--entry-bytes", type=int, default=100)
    p.add_argument("--snapshot-mb", type=float, default=100.0, help="snapshot image size")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    a = p.parse_args(argv)
    if a.syncs < 1 or a.rounds < 1 or a.batch < 1 or a.entry_bytes < 0 or a.snapshot_mb < 0:
        p.error("counts must be positive")
    with tempfile.TemporaryDirectory(prefix="storage-bench-", dir=a.dir or Path.cwd()) as d:
        result = run(Path(d), a.syncs, a.rounds, a.batch, a.entry_bytes, a.snapshot_mb)
    sys.stdout.write((json.dumps(result) if a.json else _render(result)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
