"""What a live nemesis run records: fault windows and events, status and
digest samples, the client history. Plain data, saved as `record.json` in
the run's directory and read back by `raftctl chaos report`; no logic here
beyond feeding a sample to the invariants.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from chaos.invariants import NodeSummary, RaftInvariants, Violation
from chaos.workload import OpRecord

# The client names the run itself uses after the fault phase.
RECOVERY_CLIENT = "recovery"
FINAL_CLIENT = "final"
# The event of a node that did not come back from its own disk after a power
# cut (the verdict's power-loss row is made of these).
DATA_LOST = "data-lost"


class FaultEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Something the run did or saw: a fault, its repair, a leader change."""

    t: float
    kind: str
    detail: str
    targets: list[str] = []
    error: str | None = None


class FaultWindow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One fault from injection to heal. `spec` says how its targets were
    chosen (leader, successor, one, minority, majority, all); `leader` is
    who led when it began, and `hit_leader` whether that node was a target."""

    kind: str
    label: str
    targets: list[str]
    spec: str
    start_s: float
    end_s: float | None = None  # None: it lasted until the final heal
    leader: str | None = None
    hit_leader: bool = False
    error: str | None = None


class NodeSample(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One node at one poll. `role` None: running but it did not answer."""

    process: str  # running | paused | down
    role: str | None = None
    term: int | None = None
    applied: int | None = None
    commit: int | None = None
    commit_term: int | None = None
    last_index: int | None = None
    pid: int | None = None

    def summary(self, node: str, durable: bool) -> NodeSummary | None:
        """This sample in the invariants' terms (None: nothing to check)."""
        if self.role is None or self.term is None or self.commit is None or self.pid is None:
            return None
        return NodeSummary(node=node, incarnation=self.pid, term=self.term, role=self.role,
                           commit=self.commit, commit_term=self.commit_term,
                           last_index=self.last_index if self.last_index is not None
                           else self.commit, durable=durable)


class StatusSample(msgspec.Struct, kw_only=True):
    t: float
    nodes: dict[str, NodeSample]


def observe_sample(inv: RaftInvariants, sample: StatusSample, durable: bool) -> list[Violation]:
    """Feed one poll of every node to the invariants: a node that is not
    running leads no more; one that answered is checked."""
    out: list[Violation] = []
    for node, ns in sample.nodes.items():
        if ns.process != "running":
            inv.node_down(node)
            continue
        s = ns.summary(node, durable)
        if s is not None:
            out += inv.observe_summary(sample.t, s)
    return out


class DigestSample(msgspec.Struct, kw_only=True):
    t: float
    node: str
    applied: int
    digest: str


class RunRecord(msgspec.Struct, kw_only=True):
    """Everything a run recorded; the verdict and the report are functions
    of it alone. `interval_s` is how long each fault lasted (and the quiet
    after it); `nemesis` the kinds and their weights."""

    seed: int
    duration_s: float
    interval_s: float
    nemesis: dict[str, float]
    workload: str = "register"  # the workloads' names, comma-separated
    clients: int
    keys: list[str]  # the register keys
    set_keys: list[str] = []
    txn_keys: list[str] = []  # the txn workload's keys (chaos/txn_workload.py)
    lock_name: str = ""  # the lock workload's lock and election (chaos/lock_workload.py)
    shares: dict[str, int] = {}  # clients per workload
    rate: float = 0.0  # operations a second of all clients together (0: no limit)
    value_sizes: str = ""  # the register writes' size mix
    depth: int = 1  # writes a pipelined client keeps in flight
    nodes: list[str]
    recovery_bound_s: float
    durable: bool = True  # the nodes sync before they answer (fsync always)
    notes: list[str] = []  # kinds left out and why
    faults: list[FaultWindow] = []
    events: list[FaultEvent] = []
    samples: list[StatusSample] = []
    digests: list[DigestSample] = []
    final_digests: dict[str, DigestSample] = {}
    ops: list[OpRecord] = []
    healed_s: float | None = None
    recovery_s: float | None = None  # heal -> a leader acknowledged a write
    converged: bool = False
    problems: list[str] = []  # the run itself could not do something it must

    def end_s(self) -> float:
        """The time of the last thing recorded."""
        return max([0.0, self.duration_s, *(e.t for e in self.events),
                    *(s.t for s in self.samples), *(o.complete_s for o in self.ops)])


RECORD_FILE = "record.json"


def save(rec: RunRecord, out_dir: Path) -> Path:
    path = out_dir / RECORD_FILE
    path.write_bytes(msgspec.json.encode(rec))
    return path


def load(run_dir: Path) -> RunRecord:
    """The record saved in `run_dir`; ValueError with a reason if it is
    missing or not a run record."""
    path = run_dir / RECORD_FILE
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}; give the directory a "
                         "`chaos run` wrote") from None
    try:
        return msgspec.json.decode(data, type=RunRecord)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ValueError(f"{path} is not a chaos run record: {e}") from None
