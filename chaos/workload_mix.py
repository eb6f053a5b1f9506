"""Workloads by name (`raftctl chaos run --workload`), the default mix, and
several workloads run as one, the run's clients shared among them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from chaos.lock_workload import LockWorkload
from chaos.set_workload import ChurnWorkload, SetWorkload
from chaos.txn_workload import TxnWorkload
from chaos.workload import RegisterWorkload, Workload, WorkloadSpec

REGISTER = "register"  # read, write and cas on a few keys: the linearizability check
SET = "set"  # pipelined appends of unique elements: the set checks
CHURN = "churn"  # short-lived clients opening and closing sessions
TXN_WORKLOAD = "txn"  # transactions, range reads and watches: the revision checks
LOCK_WORKLOAD = "lock"  # lock holders with fencing tokens and an election: the lock checks

WORKLOADS: dict[str, Callable[[WorkloadSpec], Workload]] = {
    REGISTER: RegisterWorkload, SET: SetWorkload, CHURN: ChurnWorkload,
    TXN_WORKLOAD: TxnWorkload, LOCK_WORKLOAD: LockWorkload}
# Every workload at once; the clients go register 1 : set 2 : churn 1.
DEFAULT_WORKLOADS = f"{REGISTER},{SET},{CHURN}"
_SHARES = {REGISTER: 1.0, SET: 2.0, CHURN: 1.0, TXN_WORKLOAD: 1.0, LOCK_WORKLOAD: 1.0}


# Every workload there is, the default's and the others.
ALL_WORKLOADS = "all"


def parse_workloads(text: str) -> list[str]:
    """`register,set` -> the names, checked, each once, in the order given;
    `all` is every workload."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if ALL_WORKLOADS in names:
        names = [n for n in names if n != ALL_WORKLOADS] + \
            [n for n in WORKLOADS if n not in names]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        what = f"unknown workload {', '.join(unknown)}" if unknown else "no workload given"
        raise ValueError(f"{what}; choose from {', '.join(WORKLOADS)}, comma-separated, "
                         f"or {ALL_WORKLOADS}")
    return names


def uses_sets(names: list[str]) -> bool:
    """Whether the run has set keys to append to and check."""
    return SET in names or CHURN in names


def split_clients(names: list[str], clients: int) -> dict[str, int]:
    """Each workload's share of `clients` (at least one each)."""
    if clients < len(names):
        raise ValueError(f"{len(names)} workloads need at least {len(names)} clients, "
                         f"not {clients}")
    total = sum(_SHARES[n] for n in names)
    out = {n: max(1, int(clients * _SHARES[n] / total)) for n in names}
    # What rounding left over goes to the largest shares first.
    for n in sorted(names, key=lambda n: -_SHARES[n]):
        if sum(out.values()) >= clients:
            break
        out[n] += 1
    while sum(out.values()) > clients:
        out[max(out, key=lambda n: out[n])] -= 1
    return out


class WorkloadMix:
    """Several workloads as one: started together, stopped together; their
    `errors` are gathered when they stop."""

    def __init__(self, names: list[str], spec: WorkloadSpec) -> None:
        self.shares = split_clients(names, spec.clients)
        self.parts: list[Workload] = [
            WORKLOADS[n](dataclasses.replace(spec, clients=self.shares[n])) for n in names]
        self.errors: list[str] = []

    def start(self) -> None:
        for w in self.parts:
            w.start()

    def stop(self, timeout_s: float) -> bool:
        # All parts at once, so none goes on working while another drains.
        stopped = [False] * len(self.parts)

        def stop_part(k: int) -> None:
            stopped[k] = self.parts[k].stop(timeout_s)

        threads = [threading.Thread(target=stop_part, args=(k,), name="chaos-stop")
                   for k in range(len(self.parts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.errors = [e for w in self.parts for e in w.errors]
        return all(stopped)
