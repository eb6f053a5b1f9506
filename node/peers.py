"""Where a node reaches the members of its configuration, kept in step with
its transport (docs/MEMBERSHIP.md). A member's address travels in the
configuration change that adds it, so every replica learns it from the log;
the initial members' come from cluster.json. A sender this node cannot place
yet (it joined after this node's log ends, and may lead) is looked up in the
supervisor's cluster.json, unless the supervisor marked it removed. No
sockets here: it tells the transport whom to reach and whom to drop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from node.config import ClusterConfig, NodeSpec
from node.control import ControlError, MemberChange
from node.errors import ConfChangeRefused, NotLeader
from node.raft.messages import ConfChange, ConfChangeSingle, ConfChangeType, ConfState
from node.transport.base import PeerTransport

if TYPE_CHECKING:  # only the control request needs the core
    from node.consensus import ConsensusCore

# A sender that is not a peer is looked up in cluster.json at most this often.
UNKNOWN_LOOKUP_INTERVAL_MS = 1_000


class ClusterView(msgspec.Struct):
    """The part of `cluster.json` a node reads: the config, and the nodes the
    supervisor removed (their messages are dropped)."""

    config: ClusterConfig
    removed: list[str] = []


def transport_addr(transport: str, me: NodeSpec) -> Callable[[NodeSpec], Any]:
    """How a node's transport addresses the node of a spec: (host, port) for
    UDP, a ZeroMQ endpoint connecting from its own address otherwise."""
    if transport == "udp":
        return lambda spec: (spec.host, spec.peer_port)
    return lambda spec: spec.peer_addr_from(me)


def encode_addr(spec: NodeSpec) -> str:
    """A member's address as its configuration carries it."""
    return msgspec.json.encode(spec).decode()


def decode_addr(addr: str) -> NodeSpec | None:
    """The member's addresses, or None if `addr` holds none (a member of the
    initial configuration, or a test's)."""
    if not addr:
        return None
    try:
        return msgspec.json.decode(addr, type=NodeSpec)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class PeerBook:
    """The members' addresses, and the transport's peers made to match the
    configuration in force. `transport_addr` turns a member's spec into the
    transport's address for it; `client_addrs` (member -> client address,
    for leader hints) is kept up to date in place; `emit(event, **keys)`
    logs."""

    def __init__(self, node_id: str, run_dir: Path, specs: dict[str, NodeSpec],
                 transport_addr: Callable[[NodeSpec], Any], client_addrs: dict[str, str],
                 emit: Callable[..., None],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.id = node_id
        self._run_dir = run_dir
        self._specs = dict(specs)
        self._transport_addr = transport_addr
        self._client_addrs = client_addrs
        self._emit = emit
        self._monotonic = monotonic
        self._transport: PeerTransport | None = None
        self._looked_up: dict[str, float] = {}

    def wanted(self, conf: ConfState) -> dict[str, Any]:
        """The transport's peers for `conf`: every other member whose
        address is known, at its transport address."""
        out: dict[str, Any] = {}
        for m in sorted(conf.members() - {self.id}):
            spec = decode_addr(conf.addr(m)) or self._specs.get(m)
            if spec is None:
                self._emit("peer_unknown", peer=m)
                continue
            self._specs[m] = spec
            self._client_addrs[m] = spec.client_addr()
            out[m] = self._transport_addr(spec)
        return out

    def attach(self, transport: PeerTransport) -> None:
        """The transport, made with `wanted(conf)` as its peers."""
        self._transport = transport

    def apply(self, conf: ConfState) -> None:
        """The configuration in force is `conf`: reach its members, drop the
        nodes that left it."""
        t = self._transport
        assert t is not None, "attach() the transport first"
        want = self.wanted(conf)
        have = t.peers()
        for m, addr in want.items():
            if have.get(m) != addr:
                t.set_peer(m, addr)
                self._emit("peer_added", peer=m, source="configuration")
        for p in sorted(set(have) - set(want)):
            t.remove_peer(p)
            self._client_addrs.pop(p, None)
            self._emit("peer_removed", peer=p)

    def unknown_sender(self, peer: str) -> None:
        """An authenticated sender that is not a peer: a member added after
        this node's log ends, which only cluster.json can place for now."""
        t = self._transport
        now = self._monotonic()
        last = self._looked_up.get(peer)
        if t is None or peer == self.id or (
                last is not None and now - last < UNKNOWN_LOOKUP_INTERVAL_MS / 1000.0):
            return
        self._looked_up[peer] = now
        try:
            view = msgspec.json.decode((self._run_dir / "cluster.json").read_bytes(),
                                       type=ClusterView)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return
        spec = next((n for n in view.config.nodes if n.id == peer), None)
        if spec is None or peer in view.removed:
            return
        self._specs[peer] = spec
        self._client_addrs[peer] = spec.client_addr()
        t.set_peer(peer, self._transport_addr(spec))
        self._emit("peer_added", peer=peer, source="cluster.json")


# --- the control request ---------------------------------------------------------

_TYPES = {"add_learner": ConfChangeType.ADD_LEARNER, "promote": ConfChangeType.ADD_VOTER,
          "remove": ConfChangeType.REMOVE}


def to_conf_change(changes: list[MemberChange]) -> ConfChange:
    """A control request's changes as the entry carries them: a new
    member's address goes with it, for every replica to learn."""
    out = []
    for c in changes:
        addr = encode_addr(c.spec) if c.spec is not None else ""
        out.append(ConfChangeSingle(_TYPES[c.type], c.node, addr))
    return ConfChange(tuple(out))


def propose_members(core: ConsensusCore[Any], changes: list[MemberChange]) -> dict[str, Any]:
    """Start a membership change at this node, which must lead; its index
    and the configuration now in force (the change takes effect when
    appended). Refusals become `ControlError`s with the core's code."""
    if any(c.type == "add_learner" and c.spec is None for c in changes):
        raise ControlError("invalid_change", "a new member needs its addresses (spec)")
    try:
        index = core.propose_conf_change(to_conf_change(changes))
    except NotLeader as e:
        raise ControlError("not_leader", f"{core.id} is not the leader "
                           f"(leader: {e.leader or 'unknown'})") from None
    except ConfChangeRefused as e:
        raise ControlError(e.code, str(e)) from None
    return {"index": index, "conf": conf_status(core)}


def conf_status(core: ConsensusCore[Any]) -> dict[str, Any]:
    """The configuration in force as `status` shows it: who votes, who
    learns, the old voters while joint, the index of the entry that made it
    and whether that entry is committed."""
    conf = core.conf
    index = core.conf_history()[-1].index
    return {"voters": list(conf.voters), "learners": list(conf.learners),
            "outgoing": list(conf.voters_outgoing), "joint": conf.is_joint(),
            "index": index, "committed": index <= core.log.commit}
