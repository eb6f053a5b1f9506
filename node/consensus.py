"""What the runner, the client API and the simulator need of a consensus
core, whichever the algorithm: `ConsensusCore`, which `RaftCore` and
`PaxosCore` both are; `make_core`, which builds the one a cluster's config
names; and the wire decoder that goes with it. Neither I/O nor policy here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from node import codec
from node.config import CoreConfig
from node.control import ControlError
from node.paxos.core import PaxosCore
from node.raft.base import Counters, Role
from node.raft.core import RaftCore
from node.raft.membership import ConfPoint
from node.raft.messages import ConfChange, ConfState, Entry, LocalMessage, SnapshotMeta
from node.raft.progress import Progress
from node.raft.ready import M, Ready
from node.storage import Storage


class LogView(Protocol):
    """The replicated log (Raft) or the slots (Paxos), as far as others look."""

    commit: int
    applied: int
    @property
    def mem_base(self) -> int:
        """The index before the first entry held in memory (storage reads
        the evicted ones back)."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def term(self, index: int) -> int | None:
        """The term (Raft) or ballot (Paxos) of the entry at `index`."""
        ...


class ConsensusCore(Protocol[M]):
    """A pure consensus state machine: inputs through `step` and `tick` (and
    the helpers below), output through `ready`/`advance` (node/raft/ready.py).
    `term` is Raft's term or the ballot a Paxos node promised."""

    @property
    def id(self) -> str: ...

    @property
    def role(self) -> Role: ...

    @property
    def term(self) -> int: ...

    @property
    def leader(self) -> str | None: ...

    @property
    def vote(self) -> str | None: ...

    @property
    def log(self) -> LogView: ...

    @property
    def snapshot_meta(self) -> SnapshotMeta: ...

    @property
    def progress(self) -> Mapping[str, Progress]:
        """A leader's view of each peer (empty on the others)."""
        ...

    @property
    def conf(self) -> ConfState: ...

    @property
    def uncommitted_bytes(self) -> int: ...

    @property
    def counters(self) -> Counters: ...

    def step(self, m: M | LocalMessage) -> None: ...

    def tick(self) -> None: ...

    def propose(self, data: bytes) -> int: ...

    def propose_many(self, datas: list[bytes]) -> tuple[int, str | None]:
        """Propose `datas` in order as far as the bound on uncommitted bytes
        allows: how many were taken (a prefix) and why the rest were not."""
        ...

    def propose_conf_change(self, cc: ConfChange) -> int: ...

    def read_index(self, ctx: bytes) -> None: ...

    def transfer_leader(self, to: str) -> None: ...

    def has_ready(self) -> bool: ...

    def ready(self) -> Ready[M]: ...

    def advance(self, rd: Ready[M]) -> None: ...

    def compact(self, meta: SnapshotMeta) -> list[Entry]:
        """Storage holds a snapshot at `meta`: forget what it covers; returns
        the entries forgotten, for the caller to free a few at a time."""
        ...

    def evict_log(self) -> list[Entry]:
        """Stop holding applied entries beyond the log's cache in memory;
        returns them, for the caller to free."""
        ...

    def conf_history(self) -> list[ConfPoint]: ...

    def snapshot_point(self, index: int) -> SnapshotMeta: ...

    def status_facts(self) -> dict[str, Any]:
        """What `status` shows of this algorithm beyond the common fields."""
        ...


def make_core(algorithm: str, node_id: str, storage: Storage, config: CoreConfig,
              rng: random.Random, members: ConfState) -> ConsensusCore[Any]:
    """The core of `algorithm` (node/config.py ALGORITHMS); `members` is the
    cluster's initial configuration (Paxos keeps it for good)."""
    if algorithm == "paxos":
        return PaxosCore(node_id, storage, config, rng, members=members)
    # The configuration in force is the latest in the log; where the log
    # holds none, it is the cluster's initial one (docs/MEMBERSHIP.md).
    return RaftCore(node_id, [], storage, config, rng, base=members)


def observe_clock(core: ConsensusCore[Any], ticks: int) -> None:
    """Tell the core the caller's clock reads `ticks` ticks since it made the
    core, ticks it could not deliver included: only Raft's lease reads use it
    (a Paxos cluster has none, node/config.py)."""
    if isinstance(core, RaftCore):
        core.observe_clock(ticks)


def peer_decoder(algorithm: str) -> Callable[[bytes | memoryview], Any]:
    """The decoder of peer messages for `algorithm`: a node takes only its
    own algorithm's messages; anything else is a `codec.DecodeError`."""
    return codec.decode_paxos if algorithm == "paxos" else codec.decode


def start_decree(core: ConsensusCore[Any], value: str) -> dict[str, Any]:
    """The control op `decree`: a Paxos node runs one Synod instance for
    `value` (PaxosCore.decree); a Raft node refuses, saying why."""
    if not isinstance(core, PaxosCore):
        raise ControlError("not_supported", "a decree is Paxos's teaching mode, and this "
                           "cluster runs Raft; make one with `raftctl up --algorithm paxos`")
    ballot = core.decree(value.encode())
    return {"node": core.id, "ballot": core.describe(ballot)}
