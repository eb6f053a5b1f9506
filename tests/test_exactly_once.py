"""Exactly-once writes on real node processes: thousands of short-lived
clients beside one that retries every write, SIGTERM to the leader under
load, and a follower that lost its data directory."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from node.client import Client, ClientError
from node.config import node_dir
from node.raft.messages import EntryKind
from node.state.kv import KVStore
from node.storage import FileStorage
from tests.procs import RawClient, TestCluster, at_least, make_cluster, wait_until


def _replay(data_dir: Path, max_sessions: int) -> tuple[KVStore, Counter[tuple[int, int]]]:
    """A node's WAL, replayed through a fresh state machine: the state, and
    how many log entries carried each (session, seq) write."""
    st = FileStorage(data_dir)
    try:
        init = st.initial_state()
        assert init.snapshot.index == 0, "this test keeps the whole log"
        kv = KVStore(max_sessions=max_sessions)
        carried: Counter[tuple[int, int]] = Counter()
        ran: Counter[tuple[int, int]] = Counter()
        for e in init.entries:
            if e.index > init.hard_state.commit:
                break
            data = e.data if e.kind is EntryKind.NORMAL else b""
            done = kv.apply(e.index, data)
            if data and done is not None and done.seq:
                carried[(done.session, done.seq)] += 1
                ran[(done.session, done.seq)] += done.executed
        assert not [k for k, n in ran.items() if n > 1], "a write ran twice"
        return kv, carried
    finally:
        st.close()


@pytest.fixture
def few_sessions(tmp_path: Path) -> Iterator[TestCluster]:
    """A cluster that keeps only 64 sessions, so that thousands of clients
    evict each other's sessions all the time (the old bug's condition)."""
    with make_cluster(tmp_path, 3, max_sessions=64) as c:
        c.start_all()
        c.wait_for_leader(10.0)
        yield c


def test_retried_writes_apply_once_among_thousands_of_short_lived_clients(
        few_sessions: TestCluster) -> None:
    """2,000 short-lived clients (register, write, half close, half vanish)
    beside one client that sends every write twice: each of its writes is
    applied exactly once on every node, as its value and every node's WAL show."""
    c = few_sessions
    stop = threading.Event()
    made = Counter[str]()

    def short_lived(k: int) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        while not stop.is_set() and made["clients"] < 2_000:
            made["clients"] += 1
            n = made["clients"]
            cl = Client(c.client_addrs(), c.keys(), ctx=ctx, timeout_s=5.0)
            try:
                cl.put(f"short/{k}", b"%d" % n)
            except ClientError:
                made["errors"] += 1
            if n % 2:
                cl.close()  # as `raftctl put` does
            else:
                cl.session = None  # vanish: the session stays until evicted
                cl.close()

    threads = [threading.Thread(target=short_lived, args=(k,), daemon=True) for k in range(6)]
    for t in threads:
        t.start()
    raw = RawClient(c)
    acked: list[bytes] = []
    retried_after_eviction = 0
    try:
        session = raw.ask({"op": "register"})[0]["session"]
        seq = 0
        while made["clients"] < 2_000:
            seq += 1
            token = b"t%d," % seq
            req = {"op": "append", "session": session, "seq": seq, "key": "retried",
                   "value": token}
            first = raw.ask(req)
            if first and first[0].get("error") == "session_expired":
                # Evicted by the newcomers: never applied; a new session goes on.
                session = raw.ask({"op": "register"})[0]["session"]
                continue
            assert first and first[0]["ok"], first
            acked.append(token)
            if seq % 10 == 0:
                # A retry after a lost answer, sent once 200 newcomers (100 of
                # them leaving their sessions open) may have evicted this one.
                wait_until(functools.partial(_made, made, min(2_000, made["clients"] + 200)),
                           30.0, "200 more short-lived clients")
            again = raw.ask(req)
            assert again, "no answer to a retry"
            if again[0].get("error") == "session_expired":
                retried_after_eviction += 1
                session = raw.ask({"op": "register"})[0]["session"]
                continue
            assert again[0]["ok"] and again[0]["index"] == first[0]["index"], (first, again)
    finally:
        stop.set()
        for t in threads:
            t.join(30.0)
        raw.close()
    assert retried_after_eviction, "no retry met an evicted session: the test proved little"
    assert made["clients"] >= 2_000 and acked
    value = wait_until(lambda: _same_everywhere(c, "retried"), 10.0, "every node has the value")
    tokens = [t + b"," for t in value.split(b",")[:-1]]
    assert tokens == acked, "each acknowledged write once, in order, and nothing else"
    last = {n: s["commit"] for n, s in c.statuses().items()}
    c.stop_all()
    for n, commit in last.items():
        kv, carried = _replay(node_dir(c.run_dir, n) / "data", max_sessions=64)
        assert kv.get("retried") == value
        mine = [k for k, times in carried.items() if times >= 2]
        assert mine, f"{n}'s WAL holds no write twice: the retries were not exercised"
        assert kv.applied_index >= commit - 1


def _made(made: Counter[str], n: int) -> bool:
    return made["clients"] >= n


def _same_everywhere(c: TestCluster, key: str) -> bytes | None:
    values = set()
    for n in c.node_ids():
        with Client({n: c.client_addrs()[n]}, c.keys(), timeout_s=2.0) as cl:
            values.add(cl.get(key, stale=True, node=n))
    return values.pop() if len(values) == 1 else None


def _appender(c: TestCluster, stop: threading.Event, acked: list[bytes],
              unknown: list[bytes]) -> None:
    """Append unique tokens until told to stop; note which were acknowledged."""
    with Client(c.client_addrs(), c.keys(), timeout_s=5.0) as cl:
        n = 0
        while not stop.is_set():
            n += 1
            token = b"a%d," % n
            try:
                if cl.append("log", token).ok:
                    acked.append(token)
            except ClientError:
                unknown.append(token)


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[TestCluster]:
    """A 3-node cluster with the default settings, on ZeroMQ."""
    with make_cluster(tmp_path, 3) as c:
        c.start_all()
        c.wait_for_leader(10.0)
        yield c


def test_sigterm_to_the_leader_under_load_loses_and_repeats_nothing(plain: TestCluster) -> None:
    """Five leaders in a row get SIGTERM while a client appends: every
    acknowledged append is there exactly once, and no append is there twice."""
    c = plain
    stop = threading.Event()
    acked: list[bytes] = []
    unknown: list[bytes] = []
    writer = threading.Thread(target=_appender, args=(c, stop, acked, unknown), daemon=True)
    writer.start()
    try:
        for _ in range(5):
            before = len(acked)
            wait_until(at_least(acked, before + 20), 20.0, "writes acknowledged")
            lead = c.wait_for_leader(10.0)
            c.stop(lead)
            stopping = [json.loads(x) for x in c.log_path(lead).read_text().splitlines()
                        if '"node_stopping"' in x]
            assert stopping, f"{lead} did not stop gracefully"
            c.start(lead)
    finally:
        stop.set()
        writer.join(30.0)
    value = wait_until(lambda: _same_everywhere(c, "log"), 10.0, "every node has the log")
    tokens = Counter(t + b"," for t in value.split(b",")[:-1])
    assert [t for t, k in tokens.items() if k > 1] == [], "an append was applied twice"
    assert set(acked) <= set(tokens), "an acknowledged append was lost"
    assert set(tokens) <= set(acked) | set(unknown), "an append nobody made"


def test_a_follower_that_lost_its_data_refuses_to_vote_again(plain: TestCluster) -> None:
    """A follower whose data directory was wiped under load refuses to start
    as a voter with a message naming the way back; forced back in, the leader
    notices once (follower_lost_data) and catches it up, and its rejections
    are a few rate-limited lines, not thousands."""
    c = plain
    lead = c.wait_for_leader(10.0)
    stop = threading.Event()
    acked: list[bytes] = []
    unknown: list[bytes] = []
    writer = threading.Thread(target=_appender, args=(c, stop, acked, unknown), daemon=True)
    writer.start()
    try:
        wait_until(lambda: len(acked) >= 50, 20.0, "writes acknowledged")
        victim = next(n for n in c.node_ids() if n != lead)
        c.kill(victim)
        shutil.rmtree(node_dir(c.run_dir, victim) / "data")
        pid = c.start(victim)
        wait_until(lambda: c.process_state(victim)[1] == "down", 10.0,
                   f"{victim} (pid {pid}) refusing to start")
        out = (node_dir(c.run_dir, victim) / "stdout.log").read_text()
        assert "has lost its data" in out and "--force-rejoin" in out, out
        c.start(victim, force_rejoin=True)
        wait_until(lambda: len(acked) >= 200, 30.0, "more writes acknowledged")
    finally:
        stop.set()
        writer.join(30.0)
    assert c.leader() == lead, "the test needs the same leader throughout"
    commit = c.statuses()[lead]["commit"]
    wait_until(lambda: c.statuses().get(victim, {}).get("applied", 0) >= commit, 20.0,
               f"{victim} caught up to {commit}")
    lost = [x for x in c.log_path(lead).read_text().splitlines()
            if '"follower_lost_data"' in x]
    assert len(lost) == 1, lost
    assert json.loads(lost[0])["follower"] == victim
    rejected = c.log_path(victim).read_text().count('"append_rejected"')
    assert rejected <= 5, f"{rejected} append_rejected lines"
    assert '"rejoined_without_data"' in c.log_path(victim).read_text()
