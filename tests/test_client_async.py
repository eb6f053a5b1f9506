"""The pipelining client (node/client_async.py, node/client_pipelined.py) on
real node processes: many concurrent requests from one client, batched into
frames, each write applied once across a leader's death."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

from node.client import ClientError, Compacted, OutcomeUnknown
from node.client_async import AsyncClient
from node.client_lease import LeaseNotFound
from node.client_pipelined import PipelinedClient
from tests.procs import TestCluster, make_cluster, start_and_settle, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """One 3-node cluster for the tests of this module."""
    with make_cluster(tmp_path_factory.mktemp("aclient"), 3) as c:
        start_and_settle(c)
        yield c


def _client(c: TestCluster, timeout_s: float = 5.0,
            attempt_timeout_s: float = 1.0) -> AsyncClient:
    return AsyncClient(c.client_addrs(), c.keys(), timeout_s=timeout_s,
                       attempt_timeout_s=attempt_timeout_s)


def test_200_concurrent_puts_are_acknowledged_and_readable(cluster: TestCluster) -> None:
    """200 puts started at once from one client are all acknowledged, in one
    session, and a linearizable read of each returns its value."""

    async def run() -> None:
        async with _client(cluster) as c:
            keys = [f"many/{i}" for i in range(200)]
            done = await asyncio.gather(*(c.put(k, k.encode()) for k in keys))
            assert all(r.ok for r in done), [r for r in done if not r.ok]
            assert len({r.index for r in done}) == 200, "two puts share a log index"
            got = await asyncio.gather(*(c.get(k) for k in keys))
            assert got == [k.encode() for k in keys]
            stale = await asyncio.gather(*(c.get(k, stale=True) for k in keys[:5]))
            assert all(v is None or v == k.encode() for k, v in zip(keys, stale, strict=False))

    asyncio.run(run())


def test_concurrent_requests_share_frames(cluster: TestCluster) -> None:
    """Requests made in one turn of the loop leave in one batch frame:
    far fewer frames than requests (one per request without batching)."""

    async def run() -> None:
        async with _client(cluster) as c:
            await c.open_session()
            before = c.stats.frames, c.stats.requests
            await asyncio.gather(*(c.put(f"batch/{i}", b"v") for i in range(100)))
            frames, reqs = c.stats.frames - before[0], c.stats.requests - before[1]
            assert reqs >= 100
            assert frames * 10 <= reqs, f"{frames} frames for {reqs} requests: not batched"

    asyncio.run(run())


def test_more_writes_than_the_cluster_keeps_answers_for(cluster: TestCluster) -> None:
    """1,500 writes at once (more than the 1,024 answers a session keeps past
    first_outstanding) all succeed: the client holds back the excess
    instead of getting too_many_outstanding."""

    async def run() -> None:
        async with _client(cluster, timeout_s=20.0) as c:
            await c.open_session()  # so that all 1,500 leave in one turn of the loop
            done = await asyncio.gather(*(c.put(f"wide/{i}", b"v") for i in range(1_500)))
            assert Counter(r.error for r in done) == Counter({None: 1_500})

    asyncio.run(run())


def test_txn_cas_delete_and_range_through_the_pipeline(cluster: TestCluster) -> None:
    """The other operations answer as node/client.py's do."""

    async def run() -> None:
        async with _client(cluster) as c:
            assert (await c.put("ops/a", b"1")).ok
            assert not (await c.cas("ops/a", b"0", b"2")).ok
            assert (await c.cas("ops/a", b"1", b"2")).ok
            assert (await c.put("ops/b", b"x")).ok
            r = await c.range("ops/", prefix=True)
            assert [(kv.key, kv.value) for kv in r.kvs] == [("ops/a", b"2"), ("ops/b", b"x")]
            assert (await c.delete("ops/b", prev=True)).value == b"x"
            assert await c.get("ops/b") is None
            t = await c.txn([], [])
            assert t.succeeded
            with pytest.raises(ClientError, match="key"):
                await c.get("k" * 2_000)  # over the 1,024-byte key limit

    asyncio.run(run())


def test_leases_range_deletes_and_compaction_through_the_pipeline(cluster: TestCluster) -> None:
    """Leases as node/client.py's: a key put with a lease is listed under
    it and goes when it is revoked; a revoked lease is not found; range
    deletes and compaction answer their counts and revisions."""

    async def run() -> None:
        async with _client(cluster) as c:
            lease = await c.lease_grant(30)
            assert lease.id > 0 and lease.ttl_ms == 30_000
            assert (await c.put("leased/a", b"1", lease=lease.id)).ok
            assert lease.id in await c.lease_list()
            info = await c.lease_ttl(lease.id, keys=True)
            assert info.keys == ["leased/a"] and 0 < info.ttl_ms <= info.granted_ttl_ms
            assert 0 < await c.lease_keepalive(lease.id) <= 30_000
            await c.lease_revoke(lease.id)
            assert await c.get("leased/a") is None
            with pytest.raises(LeaseNotFound):
                await c.lease_keepalive(lease.id)
            refused = await c.put("leased/b", b"1", lease=lease.id)
            assert not refused.ok and refused.error == "lease_not_found"
            for i in range(3):
                assert (await c.put(f"gone/{i}", b"v")).ok
            deleted, revision = await c.delete_range("gone/", prefix=True)
            assert deleted == 3 and revision > 0
            assert await c.compact(revision) == revision
            with pytest.raises(Compacted):
                await c.range("gone/", prefix=True, revision=revision - 1)

    asyncio.run(run())
    with PipelinedClient(cluster.client_addrs(), cluster.keys()) as p:
        lease = p.lease_grant(30)
        assert p.put("leased/p", b"1", lease=lease.id).ok
        assert p.lease_ttl(lease.id, keys=True).keys == ["leased/p"]
        p.lease_revoke(lease.id)
        assert p.get("leased/p") is None and p.delete_range("leased/", prefix=True)[0] == 0


def test_sync_wrapper_from_eight_threads(cluster: TestCluster) -> None:
    """Eight threads share one PipelinedClient, blocking and with futures:
    every write is acknowledged and read back, in one session."""
    errors: list[BaseException] = []
    with PipelinedClient(cluster.client_addrs(), cluster.keys()) as pc:

        def work(t: int) -> None:
            try:
                for i in range(20):
                    assert pc.put(f"thr/{t}/{i}", f"{t}.{i}".encode()).ok
                futs = [pc.submit_put(f"thr/{t}/f{i}", b"f") for i in range(20)]
                assert all(f.result().ok for f in futs)
                assert pc.get(f"thr/{t}/19") == f"{t}.19".encode()
            except BaseException as e:  # handed to the main thread, which fails the test
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors
        assert pc.range("thr/", prefix=True).count == 8 * 40
        assert pc.stats.frames < pc.stats.requests


def test_sync_wrapper_without_nodes_fails_and_leaves_no_thread() -> None:
    """A PipelinedClient given no node refuses at once, and its loop's
    thread does not outlive the refusal."""
    with pytest.raises(ValueError, match="at least one node"):
        PipelinedClient({}, None)
    assert not [t for t in threading.enumerate() if t.name == "pipelined-client"]


def test_pipelined_retries_across_a_leader_kill_apply_each_write_once(
        cluster: TestCluster) -> None:
    """32 tasks append numbered tokens; the leader is frozen at a moment when
    the followers hold writes it has not answered, then killed. The new
    leader commits those writes, whose tasks retry them with the same
    (session, seq): every acknowledged token is in its key exactly once, and
    no token (an unknown one included) twice."""
    acked: dict[str, list[int]] = {}
    unknown: dict[str, list[int]] = {}
    indexes: list[int] = [0]
    old = cluster.leader()
    assert old is not None
    pid = cluster.statuses()[old]["pid"]
    followers = [n for n in cluster.node_ids() if n != old]

    async def writer(c: AsyncClient, key: str, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                r = await c.append(key, f"{n},".encode())
            except OutcomeUnknown:
                unknown.setdefault(key, []).append(n)
                continue
            assert r.ok, r
            acked.setdefault(key, []).append(n)
            indexes[0] = max(indexes[0], r.index or 0)

    def unanswered_on_followers() -> bool:
        """Freeze the leader; keep it frozen if a follower holds an entry
        past every write the leader answered (the status round lets the
        answers it sent arrive first), else let it go on."""
        os.kill(pid, signal.SIGSTOP)
        st = cluster.statuses()
        if max(st[f]["log_last"] for f in followers if f in st) > indexes[0]:
            return True
        os.kill(pid, signal.SIGCONT)
        return False

    async def run() -> None:
        loop = asyncio.get_running_loop()
        async with _client(cluster, timeout_s=10.0, attempt_timeout_s=0.3) as c:
            stop = asyncio.Event()
            keys = [f"once/{i}" for i in range(32)]
            tasks = [asyncio.create_task(writer(c, k, stop)) for k in keys]
            for _ in range(20):
                await _until(lambda: sum(map(len, acked.values())) >= 300, 10.0,
                             "300 appends acknowledged before the leader was frozen")
                if await loop.run_in_executor(None, unanswered_on_followers):
                    break
                more = sum(map(len, acked.values())) + 50
                await _until(lambda n=more: sum(map(len, acked.values())) >= n, 10.0,
                             "50 more appends acknowledged after the leader went on")
            else:
                pytest.fail("in 20 tries the followers never held an unanswered write")
            await loop.run_in_executor(None, cluster.kill, old)
            await loop.run_in_executor(None, cluster.wait_for_leader, 10.0, {old})
            seen = sum(map(len, acked.values()))
            await _until(lambda: sum(map(len, acked.values())) >= seen + 300, 15.0,
                         "300 appends acknowledged after the new leader")
            stop.set()
            await asyncio.gather(*tasks)
            assert c.stats.retries >= 32, "the writes in flight at the freeze were not retried"
            for k in keys:
                value = await c.get(k)
                tokens = Counter(int(t) for t in (value or b"").decode().split(",") if t)
                assert not [t for t, n in tokens.items() if n > 1], f"{k}: applied twice"
                assert set(acked.get(k, [])) <= set(tokens), f"{k}: acknowledged but missing"
                assert set(tokens) <= set(acked.get(k, [])) | set(unknown.get(k, []))

    try:
        asyncio.run(run())
    finally:
        if cluster.process_state(old)[0] is None:
            cluster.start(old)
        else:  # the test failed before the kill
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: old in cluster.statuses(), 10.0, f"{old} back up")


async def _until(cond: object, timeout_s: float, what: str) -> None:
    """Wait in the loop for `cond()` with a deadline; fail naming `what`."""
    assert callable(cond)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() >= deadline:
            pytest.fail(f"timed out after {timeout_s:.1f}s waiting for: {what}")
        with contextlib.suppress(TimeoutError):
            await asyncio.sleep(0.02)  # polling cadence; the condition is what we wait for


def test_first_outstanding_is_the_lowest_seq_still_awaited() -> None:
    """Against a scripted node: while seq 1 is unanswered, later writes
    carry first_outstanding 1 (not their own seq, which would release the
    answer seq 1's retry needs); once it is answered, it moves past it."""

    async def run() -> None:
        ctx = zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        try:
            port = router.bind_to_random_port("tcp://127.0.0.1")
            node = _ScriptedNode(router)
            async with AsyncClient({"n1": f"tcp://127.0.0.1:{port}"}, None,
                                   attempt_timeout_s=5.0, ctx=ctx) as c:
                puts = [asyncio.create_task(c.put(f"k{i}", b"v")) for i in (1, 2, 3)]
                (reg,) = await node.take(1)  # one registration for the three
                assert reg["op"] == "register"
                await node.answer(reg, session=7)
                got = [reg, *await node.take(3)]
                assert [(r["seq"], r["first_outstanding"]) for r in got[1:]] == [
                    (1, 1), (2, 1), (3, 1)]
                await node.answer(got[2])
                await node.answer(got[3])
                await asyncio.gather(puts[1], puts[2])
                fourth = asyncio.create_task(c.put("k4", b"v"))
                (r4,) = await node.take(1)
                assert (r4["seq"], r4["first_outstanding"]) == (4, 1)
                await node.answer(got[1])
                await node.answer(r4)
                await asyncio.gather(puts[0], fourth)
                fifth = asyncio.create_task(c.put("k5", b"v"))
                (r5,) = await node.take(1)
                assert (r5["session"], r5["seq"], r5["first_outstanding"]) == (7, 5, 5)
                await node.answer(r5)
                await fifth
                c.timeout_s = 0.1  # the scripted node does not answer close_session
        finally:
            router.close(linger=0)
            ctx.term()

    asyncio.run(run())


def test_session_expired_registers_once_or_reports_unknown() -> None:
    """Against a scripted node: writes that find their session expired on
    their only attempt go, as new seqs, to one new session registered for
    all of them; a write whose earlier attempt went unanswered raises
    OutcomeUnknown instead (that attempt may have been applied)."""

    async def run() -> None:
        ctx = zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        try:
            port = router.bind_to_random_port("tcp://127.0.0.1")
            node = _ScriptedNode(router)
            async with AsyncClient({"n1": f"tcp://127.0.0.1:{port}"}, None,
                                   attempt_timeout_s=5.0, ctx=ctx) as c:
                first = asyncio.create_task(c.put("a", b"1"))
                await node.answer((await node.take(1))[0], session=7)
                puts = [asyncio.create_task(c.put(k, b"1")) for k in ("b", "c")]
                got = await node.take(3)
                assert [(r["session"], r["seq"]) for r in got] == [(7, 1), (7, 2), (7, 3)]
                for r in got:
                    await node.answer(r, ok=False, error="session_expired")
                (reg,) = await node.take(1)
                assert reg["op"] == "register", "one registration for the three writes"
                await node.answer(reg, session=8)
                again = await node.take(3)
                assert sorted((r["session"], r["seq"], r["key"]) for r in again) == [
                    (8, 1, "a"), (8, 2, "b"), (8, 3, "c")]
                for r in again:
                    await node.answer(r)
                assert all(r.ok for r in await asyncio.gather(first, *puts))
                c.attempt_timeout_s = 0.2
                lost = asyncio.create_task(c.put("d", b"1"))
                first_try, retry = await node.take(2)  # the first attempt goes unanswered
                assert (retry["session"], retry["seq"]) == (first_try["session"],
                                                            first_try["seq"]) == (8, 4)
                await node.answer(retry, ok=False, error="session_expired")
                with pytest.raises(OutcomeUnknown):
                    await lost
                c.timeout_s = 0.1  # the scripted node does not answer close_session
        finally:
            router.close(linger=0)
            ctx.term()

    asyncio.run(run())


class _ScriptedNode:
    """A ROUTER that hands the test each request and answers when told."""

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self.sock = sock
        self.peer = b""

    async def take(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < n:
            try:
                self.peer, frame = await asyncio.wait_for(self.sock.recv_multipart(), 5.0)
            except TimeoutError:
                pytest.fail(f"the scripted node got {len(out)} of {n} requests within 5 s: {out}")
            got = msgspec.msgpack.decode(frame)
            out += got if isinstance(got, list) else [got]
        return out

    async def answer(self, req: dict[str, Any], **fields: Any) -> None:
        await self.sock.send_multipart([self.peer, msgspec.msgpack.encode(
            {"id": req["id"], "ok": True, "index": req.get("seq", 1), **fields})])
