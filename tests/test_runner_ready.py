"""The node's runner in-process, with its storage and transport replaced by
recorders: the order in which it persists, sends and applies a Ready
(node/raft/ready.py), and a stop signal that never re-enters the core."""

from __future__ import annotations

import io
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node import codec
from node.raft.messages import (
    AppendEntries,
    Entry,
    HardState,
    Hup,
    InstallSnapshot,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
)
from node.raft.snapshots import stream_head
from node.runner import NodeRunner
from node.runner_snap import SHARDS_FREED_PER_TURN
from node.state.kv import (
    Command,
    KVStore,
    Put,
    RegisterSession,
    Write,
    encode_command,
    encode_image,
    encode_op,
)
from node.storage import FileStorage
from raftctl.cluster import Cluster, make_config
from tests.procs import wait_until


class _Recorder:
    """Wraps the runner's storage and transport, writing one line per call
    into a shared journal, so a test sees their relative order."""

    def __init__(self, journal: list[str], inner: Any, prefix: str) -> None:
        self._journal = journal
        self._inner = inner
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            self._journal.append(f"{self._prefix}.{name}{_brief(name, args)}")
            return attr(*args, **kw)

        return call


def _brief(name: str, args: tuple[Any, ...]) -> str:
    if name == "send":
        return f" {type(codec.decode(args[1])).__name__}"
    if name == "append":
        return f" {[e.index for e in args[0]]}"
    return ""


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[tuple[NodeRunner, list[str]]]:
    """n1 of a 3-node cluster, in this process, the other two never started."""
    c = Cluster(tmp_path / "run", "t")
    c.create(make_config(3, name="t"))
    r = NodeRunner(c.run_dir, "n1", io.StringIO())
    journal: list[str] = []
    storage: FileStorage = r.storage
    r.storage = _Recorder(journal, storage, "disk")  # type: ignore[assignment]  # a recorder
    r.transport = _Recorder(journal, r.transport, "net")
    try:
        yield r, journal
    finally:
        r.storage = storage
        r._close()


def test_a_vote_request_leaves_only_after_term_and_vote_are_synced(
        runner: tuple[NodeRunner, list[str]]) -> None:
    """Campaigning: the new term and the self-vote reach the disk (one sync)
    before any RequestVote is sent (§5.1, persist before send)."""
    r, journal = runner
    r.core.step(Hup(transfer=True))  # campaign at once, no pre-vote
    r._handle_ready()
    sync = journal.index("disk.sync")
    assert journal.index("disk.set_hard_state") < sync
    votes = [i for i, line in enumerate(journal) if line == "net.send RequestVote"]
    assert len(votes) == 2 and min(votes) > sync, journal


def test_a_granted_vote_leaves_only_after_it_is_synced(
        runner: tuple[NodeRunner, list[str]]) -> None:
    """Voting for a candidate: the vote is durable before the grant is sent."""
    r, journal = runner
    r.core.step(RequestVote(term=5, src="n2", dst="n1", last_index=0, last_term=0))
    r._handle_ready()
    assert journal.index("disk.sync") < journal.index("net.send RequestVoteResponse"), journal
    assert r.storage.initial_state().hard_state == HardState(5, "n2", 0)


def test_a_leader_sends_its_appends_before_its_own_persist(
        runner: tuple[NodeRunner, list[str]]) -> None:
    """A new leader's AppendEntries (with its no-op entry) leave before that
    entry is written and synced (thesis §10.2.1), and it is not counted as
    committed until its own copy is on disk."""
    r, journal = runner
    r.core.step(Hup(transfer=True))
    r._handle_ready()
    journal.clear()
    for peer in ("n2", "n3"):
        r.core.step(RequestVoteResponse(term=r.core.term, src=peer, dst="n1", granted=True))
    r._handle_ready()
    first_append = journal.index("net.send AppendEntries")
    assert first_append < journal.index("disk.append [1]") < journal.index("disk.sync"), journal
    assert r.core.log.commit == 0


def test_committed_entries_are_applied_after_the_persist_that_makes_them_durable(
        runner: tuple[NodeRunner, list[str]]) -> None:
    """A follower applies what the leader committed only after storing it, and
    acknowledges only what it stored."""
    r, journal = runner
    r.core.step(AppendEntries(term=2, src="n2", dst="n1", prev_index=0, prev_term=0,
                              entries=[Entry(2, 1), Entry(2, 2)], commit=2))
    r._handle_ready()
    assert journal.index("disk.append [1, 2]") < journal.index("disk.sync") \
        < journal.index("net.send AppendEntriesResponse"), journal
    assert r.kv.applied_index == 2


def _make_leader(r: NodeRunner) -> None:
    r.core.step(Hup(transfer=True))
    r._handle_ready()
    for peer in ("n2", "n3"):
        r.core.step(RequestVoteResponse(term=r.core.term, src=peer, dst="n1", granted=True))
    r._handle_ready()
    assert r.core.role.value == "leader"


def test_sigterm_only_sets_a_flag_and_the_loop_stops_between_steps(
        runner: tuple[NodeRunner, list[str]]) -> None:
    """The stop signal's handler touches nothing but a flag, even when it
    arrives half-way through a step of a leader's core (once it ran the
    whole graceful stop there, leadership transfer included); the loop then
    stops gracefully on its own."""
    r, _ = runner
    _make_leader(r)
    core = r.core
    entered: list[str] = []

    class _Guard:
        """The core, noting any call into it made while it is inside a call."""

        inside = False

        def __getattr__(self, name: str) -> Any:
            attr = getattr(core, name)
            if not callable(attr):
                return attr

            def call(*args: Any, **kw: Any) -> Any:
                if _Guard.inside:
                    entered.append(name)
                    return attr(*args, **kw)
                _Guard.inside = True
                try:
                    if name == "step":
                        # A signal half-way through a step: its handler runs now.
                        signal.raise_signal(signal.SIGTERM)
                    return attr(*args, **kw)
                finally:
                    _Guard.inside = False

            return call

    old = signal.getsignal(signal.SIGTERM)
    r.core = _Guard()  # the guard stands in for the core
    try:
        signal.signal(signal.SIGTERM, r._on_stop_signal)
        r.core.step(Hup())
        assert entered == [], f"the stop handler called into the core mid-step: {entered}"
        assert r._stop_signalled and not r._stopping
    finally:
        signal.signal(signal.SIGTERM, old)
        r.core = core
    r.run()  # stops at once: the flag is set; the loop hands over, then exits
    assert r._stopping


def test_status_reports_the_longest_silence_of_the_leader_and_resets_it(
        runner: tuple[NodeRunner, list[str]]) -> None:
    """`leader_gap_max_ms` is the longest time between two messages from the
    leader this node follows; messages from others do not count, a change of
    leader starts afresh, and reading it resets it."""
    r, _ = runner
    r.core.step(AppendEntries(term=2, src="n2", dst="n1", prev_index=0, prev_term=0,
                              entries=[], commit=0))
    assert r.core.leader == "n2"
    r._heard_from([("n2", b"")], 10.000)
    r._heard_from([("n3", b"")], 10.050)
    r._heard_from([("n3", b""), ("n2", b"")], 10.070)
    r._heard_from([("n2", b"")], 10.100)
    assert r.status()["leader_gap_max_ms"] == 70.0
    assert r.status()["leader_gap_max_ms"] == 0.0
    r.core.step(AppendEntries(term=3, src="n3", dst="n1", prev_index=0, prev_term=0,
                              entries=[], commit=0))
    r._heard_from([("n3", b"")], 11.000)
    assert r.status()["leader_gap_max_ms"] == 0.0, "a new leader is not the old one's silence"
    r._heard_from([("n3", b"")], 11.020)
    assert r.status()["leader_gap_max_ms"] == 20.0


def test_a_leaders_snapshot_is_stored_and_decoded_off_the_loop_while_its_ready_waits(
        runner: tuple[NodeRunner, list[str]]) -> None:
    """A big InstallSnapshot never holds the loop (§7, node/runner_snap.py):
    while the snapshot thread writes and decodes it, each turn returns at
    once with the Ready waiting and the log frozen (no tick, peers' messages
    dropped as by a paused process, not counted as a full disk's); once
    done, the image is the state machine's and the snapshot the stored one."""
    r, _ = runner
    src = KVStore()
    src.apply(1, encode_command(Command(0, RegisterSession())))
    for i in range(2, 11):
        src.apply(i, encode_command(Command(0, Write(1, i, i, encode_op(Put(f"k{i}", b"v"))))))
    stream = stream_head(r.core.conf) + encode_image(src.freeze())
    meta = SnapshotMeta(10, 1)
    gate = threading.Event()
    r._snapshotter.submit(gate.wait, 30.0)  # the thread is busy until the test opens the gate
    r.core.step(InstallSnapshot(term=2, src="n2", dst="n1", meta=meta, offset=0,
                                data=stream, done=True, size=len(stream)))
    try:
        for _ in range(3):
            r._handle_ready()
            r._tick(50)
            r._receive_peers()
            assert r._stalled is not None and r._stalled_on_snapshot
            assert r.kv.applied_index == 0 and r.storage.snapshot_meta().index == 0
        assert r.core.term == 2 and r.core.role.value == "follower", "no election while frozen"
        assert r.disk.peer_messages_dropped == 0
    finally:
        gate.set()

    def unfrozen() -> bool:
        r._handle_ready()
        return r._stalled is None

    wait_until(unfrozen, 30.0, "the snapshot stored and decoded", interval_s=0.001)
    assert r.kv.applied_index == 10 and r.kv.get("k7") == b"v"
    stored = r.storage.snapshot_meta()
    assert (stored.index, stored.term) == (10, 1) and r.core.log.commit == 10
    # The state it replaced is freed a slice of its shards per turn.
    waiting = [len(r._shards_to_free)]
    while r._shards_to_free:
        r._release_log_memory()
        waiting.append(len(r._shards_to_free))
    assert waiting[0] > SHARDS_FREED_PER_TURN and len(waiting) > 2, waiting
