"""The recipes (node/recipes/) against real node processes: the lock's FIFO
order and growing tokens and its fence, `raftctl lock -- CMD`, elect,
observe and resign, register and `discover --watch`, `bench lock`, and a
short chaos run of the lock workload, clean and, with test-only bugs, flagged. One
cluster is shared by the tests of this module; each test uses names of
its own."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psutil
import pytest
from click.testing import CliRunner, Result

from chaos.lock_checks import LOCK_FENCING, ONE_LEADER
from chaos.lock_workload import EAGER_LEADER, UNFENCED, UNSAFE_LOCK_ENV
from node.recipes import discovery, election
from node.recipes.election import Election, NotLeader
from node.recipes.lock import LOCK_PREFIX, Lock
from raftctl.cli import main
from raftctl.recipes_cmd import KEY_ENV, TOKEN_ENV
from tests.procs import TestCluster, chaos_run, make_cluster, start_and_settle, wait_until

ROOT = Path(__file__).parent.parent
TTL_S = 1.0


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """A running 3-node cluster for every test of this module."""
    with make_cluster(tmp_path_factory.mktemp("recipes"), 3) as c:
        start_and_settle(c)
        yield c


def cli(c: TestCluster, *args: str) -> Result:
    r = CliRunner().invoke(main, ["--run-dir", str(c.run_dir), "-C", "test", *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r


class Proc:
    """`raftctl ARGS` in a process of its own, its stdout lines read by a
    thread into a queue; killed by pid at the end, pass or fail."""

    def __init__(self, c: TestCluster, *args: str) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "raftctl", "--run-dir", str(c.run_dir), "-C", "test", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.p.stdout is not None
        threading.Thread(target=self._read, args=(self.p.stdout,), daemon=True).start()

    def _read(self, f: IO[str]) -> None:
        for line in f:
            self.lines.put(line.rstrip("\n"))

    def next_line(self, timeout_s: float, what: str) -> str:
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            pytest.fail(f"timed out after {timeout_s:.1f}s waiting for: {what} "
                        f"(lines so far: {self.seen})")
        self.seen.append(line)
        return line

    def end(self) -> None:
        """Kill it and whatever it started (a locked command), by pid."""
        try:
            kids = psutil.Process(self.p.pid).children(recursive=True)
        except psutil.Error:
            kids = []
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        for k in kids:
            with contextlib.suppress(psutil.Error):
                k.kill()
                k.wait(5)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in started:
            p.end()


def test_lock_waiters_get_it_in_arrival_order_with_growing_tokens(shared: TestCluster) -> None:
    """Three holders: the first holds, two queue one after the other; on
    each release the next in line gets it (FIFO), never two at once, each
    token higher than the last, and the guarded write of a holder that
    released is refused."""
    order: list[tuple[int, int]] = []
    release = [threading.Event() for _ in range(3)]
    errors: list[BaseException] = []
    holding: list[int] = []  # who holds now, as the holders see it
    most = [0]
    mutex = threading.Lock()

    def holder(i: int) -> None:
        try:
            with shared.client() as cl, cl.kept_lease(10.0) as lease:
                lock = Lock(cl, "fifo", lease)
                token = lock.acquire(timeout_s=20.0)
                with mutex:
                    holding.append(i)
                    most[0] = max(most[0], len(holding))
                    order.append((i, token))
                assert lock.guarded_put("fifo-data", str(token).encode()).accepted
                release[i].wait(20.0)
                with mutex:
                    holding.remove(i)
                lock.release()
                assert not lock.held
                lock.token = token  # as a holder paused across its release would believe
                assert not lock.guarded_put("fifo-data", b"late").accepted
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    threads = [threading.Thread(target=holder, args=(i,), daemon=True) for i in range(3)]
    with shared.client() as cl:
        def queued() -> int:
            return cl.range(f"{LOCK_PREFIX}fifo/", prefix=True, count_only=True).count

        # The conditions run within their turn of the loop: `i` is that turn's.
        for i, t in enumerate(threads):
            t.start()
            wait_until(lambda: queued() > i, 10.0, f"holder {i} queued")  # noqa: B023
        for i in range(3):
            wait_until(lambda: len(order) > i, 10.0, f"holder {i} got the lock")  # noqa: B023
            release[i].set()
        for t in threads:
            t.join(10.0)
        assert not errors, errors
        assert most[0] == 1, "two holders held the lock at once"
        assert [i for i, _ in order] == [0, 1, 2]
        tokens = [tok for _, tok in order]
        assert tokens == sorted(tokens) and len(set(tokens)) == 3
        assert cl.get("fifo-data") == str(tokens[-1]).encode()
        assert queued() == 0


def test_raftctl_lock_runs_the_command_with_its_token_and_releases(
        shared: TestCluster) -> None:
    """`raftctl lock NAME -- CMD` gives CMD its token and key in the
    environment, exits with CMD's code, and leaves the lock free."""
    code = (f"import os, sys; print(os.environ['{TOKEN_ENV}'], os.environ['{KEY_ENV}']); "
            "sys.exit(3)")
    p = subprocess.run([sys.executable, "-m", "raftctl", "--run-dir", str(shared.run_dir),
                        "-C", "test", "lock", "job", "--ttl", "2", "--", sys.executable, "-c",
                        code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 3, p.stderr
    token, key = p.stdout.split()
    assert key.startswith(f"{LOCK_PREFIX}job/") and int(token) > 0
    with shared.client() as cl:
        assert cl.range(f"{LOCK_PREFIX}job/", prefix=True, count_only=True).count == 0
    r = cli(shared, "lock", "job", "--json", "--", sys.executable, "-c", "pass")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output.splitlines()[-1])
    assert doc["lock"] == "job" and doc["exit_code"] == 0 and doc["token"] > int(token)


def test_raftctl_lock_terminates_the_command_when_the_lease_is_lost(
        shared: TestCluster, procs: list[Proc]) -> None:
    """When the holder's lease ends under it (here revoked by someone
    else), `raftctl lock` terminates CMD and exits 1 saying the lock was lost."""
    held = Proc(shared, "lock", "lost", "--ttl", "5", "--", sys.executable, "-c",
                "import time; print('working', flush=True); time.sleep(60)")
    procs.append(held)
    assert held.next_line(20.0, "the command started") == "working"
    with shared.client() as cl:
        key = cl.range(f"{LOCK_PREFIX}lost/", prefix=True, keys_only=True).kvs[0].key
        cl.lease_revoke(int(key.rsplit("/", 1)[1], 16))
    assert held.p.wait(15.0) == 1
    assert held.p.stderr is not None
    assert "lost the lock lost" in held.p.stderr.read()


def test_elect_observe_and_resign(shared: TestCluster, procs: list[Proc]) -> None:
    """An observer sees no leader, then a, then (after a resigns on
    SIGTERM) b, then nobody once b resigns too."""
    obs = Proc(shared, "observe", "pick", "--json")
    procs.append(obs)
    assert json.loads(obs.next_line(20.0, "the observer's first line"))["leader"] is None
    a = Proc(shared, "elect", "pick", "a", "--ttl", "5")
    procs.append(a)
    assert "leader of pick" in a.next_line(20.0, "a leads")
    assert json.loads(obs.next_line(10.0, "a observed"))["value"] == "a"
    b = Proc(shared, "elect", "pick", "b", "--ttl", "5", "--json")
    procs.append(b)
    with shared.client() as cl:
        wait_until(lambda: cl.range("_election/pick/", prefix=True, count_only=True).count == 2,
                   10.0, "b stood as a candidate")
    a.p.send_signal(signal.SIGTERM)
    assert a.next_line(10.0, "a resigned") == "resigned from pick"
    assert a.p.wait(10.0) == 0
    assert json.loads(b.next_line(10.0, "b leads"))["event"] == "elected"
    assert json.loads(obs.next_line(10.0, "b observed"))["value"] == "b"
    b.p.send_signal(signal.SIGTERM)
    assert json.loads(b.next_line(10.0, "b resigned"))["event"] == "resigned"
    assert json.loads(obs.next_line(10.0, "nobody leads"))["leader"] is None


def test_proclaim_changes_the_value_only_while_leading(shared: TestCluster) -> None:
    """The leader's proclaim reaches observers; a candidate that does not lead is
    refused, and so is the leader's once its lease ended."""
    with shared.client() as cl, shared.client() as other, cl.kept_lease(10.0) as la, \
            other.kept_lease(10.0) as lb:
        lead, second = Election(cl, "say", la), Election(other, "say", lb)
        lead.campaign(b"one")
        seen = election.observe(cl, "say")
        first = next(seen)
        assert first is not None and first.value == b"one"
        lead.proclaim(b"two")
        now = next(seen)
        assert now is not None and (now.key, now.value) == (lead.key, b"two")
        with pytest.raises(NotLeader):
            second.proclaim(b"mine")
        cl.lease_revoke(la.id)
        with pytest.raises(NotLeader):
            lead.proclaim(b"three")
        assert election.leader_of(cl, "say") is None


def test_a_dead_holders_lock_is_free_a_ttl_later(shared: TestCluster,
                                                 procs: list[Proc]) -> None:
    """`raftctl lock` killed with SIGKILL releases nothing itself; the
    cluster frees the lock when its lease lapses, and the next holder gets
    a higher token."""
    held = Proc(shared, "lock", "dead", "--ttl", str(TTL_S), "--json", "--", sys.executable,
                "-c", f"import os, time; print(os.environ['{TOKEN_ENV}'], flush=True); "
                "time.sleep(60)")
    procs.append(held)
    token = int(held.next_line(20.0, "the command got its token"))
    held.end()
    with shared.client() as cl:
        with cl.lock("dead", TTL_S, timeout_s=TTL_S + 10.0) as lock:
            assert lock.token is not None and lock.token > token
        assert cl.range(f"{LOCK_PREFIX}dead/", prefix=True, count_only=True).count == 0


def test_discover_watch_sees_a_registration_come_and_vanish_after_its_ttl(
        shared: TestCluster, procs: list[Proc]) -> None:
    """`discover --watch` prints an instance registered after it started,
    and its removal about a TTL after the registering process was killed
    (no deregistration: the lease expired)."""
    watch = Proc(shared, "discover", "web", "--watch", "--json")
    procs.append(watch)
    assert json.loads(watch.next_line(20.0, "the first listing"))["addrs"] == []
    reg = Proc(shared, "register", "web", "127.0.0.1:8080", "--ttl", str(TTL_S))
    procs.append(reg)
    assert "registered 127.0.0.1:8080" in reg.next_line(20.0, "registered")
    added = json.loads(watch.next_line(10.0, "the instance added"))
    assert (added["type"], added["addr"]) == ("added", "127.0.0.1:8080")
    with shared.client() as cl:
        assert discovery.discover(cl, "web").addrs == ["127.0.0.1:8080"]
    reg.p.kill()
    removed = json.loads(watch.next_line(TTL_S + 10.0, "the instance removed after its TTL"))
    assert (removed["type"], removed["addr"]) == ("removed", "127.0.0.1:8080")
    assert removed["revision"] > added["revision"]


def test_bench_lock_reports_both_phases(shared: TestCluster) -> None:
    """`bench lock` measures one holder alone and several in turn."""
    r = cli(shared, "bench", "lock", "--contenders", "3", "--duration", "1", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    for phase, n in (("uncontended", 1), ("contended", 3)):
        assert doc[phase]["contenders"] == n and doc[phase]["cycles"] > 0
        assert doc[phase]["errors"] == 0


@pytest.mark.soak
def test_a_short_chaos_lock_run_is_clean(shared: TestCluster) -> None:
    """`chaos run --workload lock`: holders and leaders pause past their
    TTL under the nemesis, their late writes are fenced off, and both lock
    rows are clean."""
    code, rep = chaos_run(shared, "--duration", "10s", "--interval", "1.5s", "--seed", "3",
                          "--workload", "lock", "--clients", "3")
    rows = rep["verdict"]["checks"]
    assert code == 0, rep["verdict"]["violations"]
    assert rows[LOCK_FENCING].startswith("ok: ") and rows[ONE_LEADER].startswith("ok: ")
    assert rep["operations"]["lock-write"]["ok"] > 0
    fenced = re.search(r"(\d+) fenced off", rows[LOCK_FENCING])
    assert fenced and int(fenced.group(1)) > 0, "no paused holder's write was fenced off"


def test_an_unfenced_eager_chaos_lock_run_is_flagged(shared: TestCluster,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With the test-only bugs, a holder paused past its TTL writes after
    the lock moved on, and a campaigner claims leadership while another
    leads: both lock rows say so."""
    monkeypatch.setenv(UNSAFE_LOCK_ENV, f"{UNFENCED},{EAGER_LEADER}")
    code, rep = chaos_run(shared, "--duration", "10s", "--interval", "1.5s", "--seed", "3",
                          "--workload", "lock", "--clients", "3")
    assert code == 1
    assert rep["verdict"]["checks"][LOCK_FENCING].startswith("FAILED")
    assert any(v["check"] == LOCK_FENCING and "was accepted at revision" in v["detail"]
               for v in rep["verdict"]["violations"])
    assert rep["verdict"]["checks"][ONE_LEADER].startswith("FAILED")


@pytest.mark.soak
def test_a_minute_of_chaos_lock_is_clean(shared: TestCluster) -> None:
    """60 s of the lock workload with more holders under the default
    nemesis: both lock rows clean, and late writes fenced off."""
    code, rep = chaos_run(shared, "--duration", "60s", "--seed", "17", "--workload", "lock",
                          "--clients", "6")
    rows = rep["verdict"]["checks"]
    assert code == 0, rep["verdict"]["violations"]
    assert rows[LOCK_FENCING].startswith("ok: ") and rows[ONE_LEADER].startswith("ok: ")
