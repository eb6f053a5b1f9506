"""Records the node logs that tests/test_explain.py narrates: short real runs of
a 3-node cluster, driven through the CLI as a user would, each saved under
tests/data/explain/NAME/nodes/NODE/node.log, trimmed to the lines that run made.

Each run ends with its nodes killed (SIGKILL leaves no line), so the logs end
as a live cluster's do. Run from the repository root:
`python3 tests/data/explain/record.py [NAME...]`,
then review the diff and the expected sentences in tests/test_explain.py (the
runs are real, so who leads and the timings differ from one recording to the
next). Every process started is ended by its pid, even on failure.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from raftctl.cluster import Cluster  # noqa: E402  (after the path is set, as a script)
from raftctl.logview import now_ts  # noqa: E402  (likewise)


class Run:
    """One scratch cluster: CLI commands against it, waits, and the pids of
    every node process it ever ran, to end them all."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.cluster = Cluster(run_dir, "rec")
        self.pids: set[tuple[int, float]] = set()
        # Lines outside [trim_from, trim_to) are left out of the recording:
        # those before the attempt it keeps, and those its own ending made.
        self.trim_from = ""
        self.trim_to = "~"

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "raftctl", "--run-dir", str(self.run_dir),
                            *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        if self.cluster.exists():
            self.pids |= {(i.pid, i.create_time) for i in self.cluster.load().processes.values()}
        if ok and p.returncode != 0:
            raise RuntimeError(f"raftctl {' '.join(args)} exited {p.returncode}: {p.stderr}")
        return p

    def wait(self, cond: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = cond()
            if got:
                return got
            time.sleep(0.05)  # polling cadence; the condition is what is waited for
        raise RuntimeError(f"timed out waiting for {what}")

    def leader(self, other_than: str | None = None) -> str:
        def find() -> str | None:
            lead = self.cluster.leader()
            return lead if lead is not None and lead != other_than else None
        return str(self.wait(find, "a leader" + (f" other than {other_than}" if other_than
                                                  else "")))

    def role(self, node: str) -> str | None:
        st = self.cluster.node_status(node, 0.5, None).status
        return None if st is None else str(st.get("role"))

    def all_follow(self, lead: str) -> None:
        def follows() -> bool:
            sts = [s.status for s in self.cluster.status(timeout_s=0.5)
                   if s.process == "running"]
            return all(st is not None and st.get("leader") == lead for st in sts)
        self.wait(follows, f"every running node follows {lead}")

    def end(self) -> None:
        for pid, ctime in self.pids:
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - ctime) > 0.05:
                    continue
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(5)
            except psutil.Error:
                continue


def election(r: Run) -> None:
    """The first election of a fresh cluster."""
    r.cli("up", "-n", "3")
    r.all_follow(r.leader())


def failover(r: Run) -> None:
    """The leader is killed; the others elect a new one; the old one returns."""
    r.cli("up", "-n", "3")
    old = r.leader()
    r.all_follow(old)
    r.cli("put", "colour", "blue")
    r.cli("kill", old)
    new = r.leader(other_than=old)
    r.cli("put", "colour", "green")
    r.cli("start", old)
    r.all_follow(new)


def partition(r: Run) -> None:
    """The leader is cut off: it steps down for want of a majority, the others
    elect a new leader, and after `heal` the old one follows it."""
    r.cli("up", "-n", "3")
    old = r.leader()
    r.all_follow(old)
    r.cli("put", "colour", "blue")
    r.cli("partition", "--isolate", old)
    new = r.leader(other_than=old)
    r.cli("put", "colour", "green")
    # CheckQuorum: the isolated leader steps down on its own.
    r.wait(lambda: r.role(old) not in (None, "leader"), f"{old} stepped down")
    r.cli("heal")
    r.all_follow(new)


def refused_vote(r: Run) -> None:
    """n3 misses three writes; with the leader n1 dead and n2 unable to reach
    n3, n3 stands again and again, and n2 refuses it for its stale log; after
    `heal`, n2 wins and brings n3 up to date."""
    r.cli("up", "-n", "3")
    r.cli("transfer", "n1")
    r.all_follow("n1")
    r.cli("kill", "n3")
    for k in ("a", "b", "c"):
        r.cli("put", k, "1")
    r.cli("kill", "n1")
    r.cli("block", "n2", "n3", "--one-way")
    r.cli("start", "n3")
    log2 = r.cluster.log_path("n2")
    r.wait(lambda: log2.read_text().count('"reason": "log_behind"') >= 3,
           "n2 refused n3 three times")
    r.cli("heal")
    r.all_follow(r.leader())


def _split_terms(r: Run, since: str) -> set[int]:
    """Terms since `since` in which two nodes stood and nobody won."""
    stood: dict[int, int] = {}
    won: set[int] = set()
    for log in (r.run_dir / "nodes").glob("*/node.log"):
        for line in log.read_text().splitlines():
            ev = json.loads(line)
            if ev["ts"] < since:
                continue
            if ev["event"] == "election_started":
                stood[ev["term"]] = stood.get(ev["term"], 0) + 1
            elif ev["event"] == "became_leader":
                won.add(ev["term"])
    return {t for t, n in stood.items() if n > 1 and t not in won}


def split_vote(r: Run) -> None:
    """With 30 ms of delay on every link, the two survivors of a killed
    leader sometimes time out within one message delay of each other and
    split the vote (about one election in three); the randomized timeouts
    then part them. Tried until it happens; trimmed to the last attempt."""
    r.cli("up", "-n", "3")
    r.cli("netem", "--delay", "30ms")
    for _ in range(20):
        old = r.leader()
        r.all_follow(old)
        r.trim_from = now_ts()
        r.cli("kill", old)
        r.leader(other_than=old)
        if _split_terms(r, r.trim_from):
            r.all_follow(r.leader())
            return
        r.cli("start", old)
    raise RuntimeError("no split vote in 20 failovers")


RECORDINGS: dict[str, Callable[[Run], None]] = {
    "election": election, "failover": failover, "partition": partition,
    "refused_vote": refused_vote, "split_vote": split_vote,
}


def record(name: str) -> None:
    with tempfile.TemporaryDirectory(prefix="explain-rec-") as tmp:
        r = Run(Path(tmp) / "run")
        try:
            RECORDINGS[name](r)
            r.trim_to = now_ts()
        finally:
            r.end()
        out = HERE / name
        shutil.rmtree(out, ignore_errors=True)
        for log in sorted((r.run_dir / "nodes").glob("*/node.log")):
            dest = out / "nodes" / log.parent.name / "node.log"
            dest.parent.mkdir(parents=True)
            lines = log.read_text().splitlines(keepends=True)
            dest.write_text("".join(_trimmed(lines, r.trim_from, r.trim_to)))
    print(f"recorded {name} in {out.relative_to(ROOT)}")


def _trimmed(lines: list[str], since: str, until: str) -> list[str]:
    """The lines from `since` to `until`, less what names this machine: the
    addresses and pid in node_started become placeholders."""
    out = []
    for line in lines:
        ev = json.loads(line)
        if not since <= ev["ts"] < until:
            continue
        if ev.get("event") == "node_started":
            ev.update(pid=0, peer_addr="tcp://127.0.0.1:0", client_addr="tcp://127.0.0.1:0")
            line = json.dumps(ev) + "\n"
        out.append(line)
    return out


if __name__ == "__main__":
    for n in sys.argv[1:] or list(RECORDINGS):
        record(n)
