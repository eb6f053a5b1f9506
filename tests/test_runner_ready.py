"""The node's runner in-process, with its storage and transport replaced by
recorders: the order in which it persists, sends and applies a Ready
(node/raft/ready.py), and a stop signal that never re-enters the core."""

from __future__ import annotations

import io
import signal
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
    RequestVote,
    RequestVoteResponse,
)
from node.runner import NodeRunner
from node.storage import FileStorage
from raftctl.cluster import Cluster, make_config


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
