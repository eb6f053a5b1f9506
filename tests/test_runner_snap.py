"""A node's local snapshot is made a slice per turn of its loop, never at
once, from the image frozen when it began (node/runner_snap.py): the runner
in-process, a one-node cluster, its loop turned by hand."""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

import node.runner_snap as runner_snap
import node.state.image as image
from node.raft.messages import Hup, Propose
from node.runner import NodeRunner
from node.state.kv import (
    Command,
    Put,
    RegisterSession,
    Write,
    decode_image,
    encode_command,
    encode_image,
    encode_op,
)
from raftctl.cluster import Cluster, make_config
from tests.procs import wait_until


@contextlib.contextmanager
def _lone_leader(run_dir: Path) -> Iterator[NodeRunner]:
    """The one node of the one-node cluster in `run_dir` (made if it is not
    there), in this process, leading; closed at the end."""
    c = Cluster(run_dir, "t")
    if not c.exists():
        c.create(make_config(1, name="t", catchup_entries=100))
    r = NodeRunner(c.run_dir, "n1", io.StringIO())
    try:
        r.core.step(Hup(transfer=True))
        _settle(r)
        assert r.core.leader == "n1", "a lone node elects itself"
        yield r
    finally:
        r._close()


@pytest.fixture
def leader(tmp_path: Path) -> Iterator[NodeRunner]:
    with _lone_leader(tmp_path / "run") as r:
        yield r


def _settle(r: NodeRunner) -> None:
    """Persist, commit and apply everything proposed so far."""
    while r.core.has_ready():
        r._handle_ready()


def _turn_until_installed(r: NodeRunner, index: int) -> None:
    """Turn the images' part of the loop until the snapshot at `index` is installed."""

    def installed() -> bool:
        r._advance_images()
        return r.core.snapshot_meta.index == index

    wait_until(installed, 30.0, f"the snapshot at {index} installed", interval_s=0.0)


def _propose_puts(r: NodeRunner, session: int, first_seq: int, n: int,
                  value: bytes = b"v" * 50) -> None:
    """Session `session`'s writes `first_seq`.. of `value` to key/<seq % 400>."""
    for seq in range(first_seq, first_seq + n):
        op = encode_op(Put(f"key/{seq % 400}", value))
        r.core.step(Propose(encode_command(Command(0, Write(session, seq, seq, op)))))
    _settle(r)


def test_a_local_snapshot_is_encoded_a_piece_per_turn_from_its_frozen_image(
        leader: NodeRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no time budget left, each turn encodes one piece: the snapshot
    spans many turns, writes applied meanwhile are not in it, and the file
    holds exactly the state at its index."""
    r = leader
    r.core.step(Propose(encode_command(Command(0, RegisterSession()))))
    _settle(r)
    session = r.kv.applied_index
    _propose_puts(r, session, 1, 400)
    # Small chunks, so that the image is many pieces (a piece is a chunk at least).
    monkeypatch.setattr(image, "KV_IMAGE_CHUNK_BYTES", 500)
    frozen = r.kv.freeze()
    expected = encode_image(frozen)  # bytes: the frozen dicts must not change either
    chunks = sum(1 for c in image._chunks(frozen) if c)
    assert chunks > 20, chunks
    monkeypatch.setattr(runner_snap, "SNAPSHOT_SLICE_MS", 0.0)
    monkeypatch.setattr(runner_snap, "KV_IMAGE_PIECE_BYTES", 1)
    assert r._maybe_snapshot(force=True)
    turns = 0

    def turn() -> bool:
        nonlocal turns
        turns += 1
        if turns == 10:
            # Overwrites of keys in the image, while it is being written.
            _propose_puts(r, session, 401, 400, value=b"new")
        r._advance_images()
        return r.storage.snapshot_meta().index == frozen.applied_index

    wait_until(turn, 30.0, "the snapshot installed", interval_s=0.0)
    assert turns > chunks, f"{chunks} chunks and the head were encoded in {turns} turns"
    assert r.storage.snapshot().data == expected
    assert encode_image(decode_image(expected)) == expected
    assert r.kv.get("key/1") == b"new"
    assert r.core.snapshot_meta.index == frozen.applied_index


def test_entries_a_snapshot_compacts_away_are_freed_a_few_per_turn(
        leader: NodeRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log forgets what a snapshot covers (but `catchup_entries`), and
    the loop frees those entries ENTRIES_FREED_PER_TURN at a time, never a
    snapshot interval of them in one turn."""
    r = leader
    r.core.step(Propose(encode_command(Command(0, RegisterSession()))))
    _settle(r)
    _propose_puts(r, r.kv.applied_index, 1, 300)
    monkeypatch.setattr(runner_snap, "ENTRIES_FREED_PER_TURN", 50)
    applied = r.kv.applied_index
    assert r._maybe_snapshot(force=True)
    _turn_until_installed(r, applied)
    assert r.core.log.first_index() == applied - 100 + 1
    waiting = [len(r._to_free)]
    while r._to_free:
        r._release_log_memory()
        waiting.append(len(r._to_free))
    assert waiting[0] > 150, waiting
    assert all(a - b <= 50 for a, b in itertools.pairwise(waiting)), waiting


def test_a_finished_image_is_freed_a_slice_per_turn(leader: NodeRunner) -> None:
    """What a finished snapshot image alone still holds (shards, index and
    history chunks the store replaced since it was frozen) is not dropped in
    the turn that finishes it: the loop frees it a slice per turn."""
    r = leader
    r.core.step(Propose(encode_command(Command(0, RegisterSession()))))
    _settle(r)
    _propose_puts(r, r.kv.applied_index, 1, 300)
    applied = r.kv.applied_index
    assert r._maybe_snapshot(force=True)
    job = r._image_jobs[-1]
    assert job.image is not None and job.image.applied_index == applied
    _turn_until_installed(r, applied)
    assert job.image is None, "the finished job still holds its image"
    shards = [len(r._shards_to_free)]
    chunks = [len(r._image_chunks_to_free)]
    assert shards[0] >= runner_snap.SHARDS_FREED_PER_TURN and chunks[0] >= 1, (shards, chunks)
    while r._shards_to_free or r._image_chunks_to_free:
        r._release_log_memory()
        shards.append(len(r._shards_to_free))
        chunks.append(len(r._image_chunks_to_free))
    assert len(shards) > 2, shards
    assert all(a - b <= runner_snap.SHARDS_FREED_PER_TURN for a, b in itertools.pairwise(shards))
    assert all(a - b <= runner_snap.IMAGE_CHUNKS_FREED_PER_TURN
               for a, b in itertools.pairwise(chunks))


def test_a_big_image_waits_for_as_much_log_as_it_weighs(
        leader: NodeRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the floor, a snapshot is due only once the commands applied
    since the last one weigh its image times `snapshot_log_ratio`, even
    past `snapshot_entries`; below the floor (or with the ratio 0) the
    entry bound alone decides, as before."""
    r = leader
    r.core.step(Propose(encode_command(Command(0, RegisterSession()))))
    _settle(r)
    session = r.kv.applied_index
    _propose_puts(r, session, 1, 300)
    applied = r.kv.applied_index
    assert r._maybe_snapshot(force=True)
    _turn_until_installed(r, applied)
    image = r._last_image_bytes
    assert image == len(r.storage.snapshot().data) > 0, image
    # 50 writes of 50-byte values: far below the image. No snapshot may start
    # on its own meanwhile (the loop's apply asks): the bound is far away.
    _propose_puts(r, session, 301, 50)
    assert r._local_snap is None and 0 < r._bytes_since_snapshot < image
    r.cfg = msgspec.structs.replace(r.cfg, snapshot_entries=10)  # now far past it
    monkeypatch.setattr(runner_snap, "SNAPSHOT_RATIO_FLOOR_BYTES", image + 1)
    assert r._snapshot_due(), "below the floor, the entry bound decides"
    monkeypatch.setattr(runner_snap, "SNAPSHOT_RATIO_FLOOR_BYTES", 1)
    assert not r._snapshot_due(), "the log since is lighter than the image"
    r.cfg = msgspec.structs.replace(r.cfg, snapshot_log_ratio=0.0)
    assert r._snapshot_due(), "ratio 0: off"
    r.cfg = msgspec.structs.replace(r.cfg, snapshot_log_ratio=1.0)
    r.cfg = msgspec.structs.replace(r.cfg, snapshot_entries=10**9)
    seq = 351
    while r._bytes_since_snapshot < image:
        assert not r._snapshot_due() and r._local_snap is None
        _propose_puts(r, session, seq, 20)
        seq += 20
    r.cfg = msgspec.structs.replace(r.cfg, snapshot_entries=10)
    assert r._snapshot_due(), "the log since weighs the image"
    # A snapshot that fails gives back the log it counted: its retry is due
    # at once, not after another image's weight.
    counted = r._bytes_since_snapshot
    assert r._maybe_snapshot() and r._bytes_since_snapshot == 0
    job = r._local_snap
    assert job is not None
    r._abandon_local(job, OSError(5, "Input/output error"))
    assert r._bytes_since_snapshot == counted and r._snapshot_due()


def test_a_restarted_node_waits_for_the_image_it_holds(tmp_path: Path) -> None:
    """The image a node starts from counts as its last one."""
    with _lone_leader(tmp_path / "run") as r:
        r.core.step(Propose(encode_command(Command(0, RegisterSession()))))
        _settle(r)
        _propose_puts(r, r.kv.applied_index, 1, 300)
        applied = r.kv.applied_index
        assert r._maybe_snapshot(force=True)
        _turn_until_installed(r, applied)
        image = r._last_image_bytes
    with _lone_leader(tmp_path / "run") as again:
        assert again._last_image_bytes == image > 0
