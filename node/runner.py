"""`NodeRunner`: the node's one event loop, and the only caller of the core
that does I/O. Poll sockets up to the next tick, step in what arrived, tick,
then handle `Ready`: persist (one sync), send, apply, reply, advance. Its
clients and operators are node/runner_clients.py's, its disk (persisting,
and a full disk) node/runner_disk.py's.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import msgspec
import zmq

from node import codec
from node.api import ClientApi, ClientRequest
from node.config import (
    CLIENT_FRAME_HARD_LIMIT_BYTES,
    CLIENT_QUEUE_FRAMES,
    MAX_MESSAGE_BYTES,
    STATUS_LOG_INTERVAL_MS,
    ClusterConfig,
    node_dir,
)
from node.consensus import ConsensusCore, make_core, observe_clock, peer_decoder, start_decree
from node.control import ControlError, MemberChange
from node.disk import DiskWatch, needs_space
from node.errors import NotLeader
from node.gc_pauses import GcPauses
from node.logs import RATE_LIMITED_EVENTS, LogFile, RateLimiter, make_logger
from node.membership_mark import DataLost, FloorRecorder, check_on_start
from node.paxos.messages import PaxosMessage
from node.peers import PeerBook, conf_status, propose_members, transport_addr
from node.private_files import private_dir
from node.raft.base import Role
from node.raft.confchange import initial
from node.raft.messages import ConfState, Entry, EntryKind, PeerMessage, Snapshot
from node.raft.ready import Ready, SoftState, Step
from node.replies import ClientReplies
from node.runner_clients import ClientHandling
from node.runner_disk import DiskHandling
from node.runner_snap import SnapshotHandling
from node.state.kv import UNSAFE_BUGS_ENV, KVStore, parse_unsafe_bugs
from node.storage import FileStorage, StorageError
from node.transport.auth import ZapHandler
from node.transport.base import PeerTransport
from node.transport.links import FaultyTransport, LinkFilter, LinkRule
from node.transport.udp import UdpTransport, udp_core_limits, udp_mac_key
from node.transport.zmq import CurveKeys, ZmqTransport, make_server_socket, read_keys
from node.watch import WatchHub

# The time budgets of one loop turn are beside the work they bound
# (node/runner_clients.py, node/runner_disk.py). After a stall (SIGSTOP, a
# long GC), catch up on at most this many ticks.
_MAX_CATCHUP_TICKS = 5



class RunDir(msgspec.Struct, frozen=True):
    """The part of `cluster.json` a node reads."""

    config: ClusterConfig


def load_cluster(run_dir: Path) -> ClusterConfig:
    path = run_dir / "cluster.json"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SystemExit(f"cannot read {path}: {e.strerror}") from None
    try:
        cfg = msgspec.json.decode(raw, type=RunDir).config
    except msgspec.DecodeError as e:
        raise SystemExit(f"{path} is not a valid cluster file: {e}") from None
    problems = cfg.problems()
    if problems:
        raise SystemExit(f"{path}: " + "; ".join(problems))
    return cfg


def load_links(path: Path) -> dict[str, LinkRule]:
    if not path.exists():
        return {}
    return msgspec.json.decode(path.read_bytes(), type=dict[str, LinkRule])


class NodeRunner(ClientHandling, DiskHandling, SnapshotHandling):
    """One node: storage, core, state machine, sockets, and the loop."""

    def __init__(self, run_dir: Path, node_id: str, log_stream: TextIO,
                 force_rejoin: bool = False) -> None:
        self.run_dir = run_dir
        self.cfg = load_cluster(run_dir)
        self.spec = self.cfg.node(node_id)
        self.id = node_id
        self.started = time.monotonic()
        self._stopping = False
        self._stop_signalled = False
        self._stop_deadline = 0.0
        self._limiter = RateLimiter()
        self.counters: dict[str, int] = {"bad_messages": 0, "spoofed_messages": 0,
                                          "auth_rejected": 0, "bad_requests": 0}
        self._core: ConsensusCore[Any] | None = None
        self.log = make_logger(log_stream, node_id, self._log_state)
        self._log_file = log_stream if isinstance(log_stream, LogFile) else None
        ndir = node_dir(run_dir, node_id)
        private_dir(ndir / "data")

        self.storage = FileStorage(ndir / "data", fsync=self.cfg.fsync)
        self.disk = DiskWatch(ndir / "data")
        # A Ready whose persist found the disk full waits here, the steps of
        # its persist already done in _persisted, and the log is frozen.
        self._stalled: Ready[Any] | None = None
        self._stalled_on_snapshot = False
        self._persisted: set[str] = set()
        self._stall_retry_at = 0.0
        if self.cfg.fsync == "never":
            self.log.warning("durability_off", fsync="never",
                             detail="acknowledged writes can be lost on a crash")
        if self.storage.recovery.truncated_bytes:
            rec = self.storage.recovery
            self.log.warning("wal_tail_truncated", bytes=rec.truncated_bytes, file=rec.file,
                             offset=rec.offset)
        try:
            self._member_marked, forced = check_on_start(
                run_dir, node_id, ndir / "data", self.storage.initial_state(),
                force_rejoin=force_rejoin, sync=self.cfg.fsync == "always")
        except DataLost:
            self.storage.close()
            raise
        if forced is not None:
            self.log.warning("rejoined_without_data", detail=forced)
        try:  # test-only bugs put back on purpose (node/state/kv.py); read here alone
            self.unsafe_bugs = parse_unsafe_bugs(os.environ.get(UNSAFE_BUGS_ENV, ""))
        except ValueError as e:
            raise SystemExit(f"{UNSAFE_BUGS_ENV}: {e}") from None
        if self.unsafe_bugs:
            self.log.warning("unsafe_bugs_enabled", bugs=sorted(self.unsafe_bugs),
                             detail="this node breaks its guarantees on purpose, for tests only")
        self.kv = KVStore(session_timeout_ms=self.cfg.session_timeout_ms,
                          max_sessions=self.cfg.max_sessions,
                          history_revisions=self.cfg.history_revisions,
                          history_max_bytes=self.cfg.history_max_bytes,
                          unsafe_bugs=self.unsafe_bugs)
        view = self.storage.snapshot_view()
        if view is not None:
            with view:
                self.kv.restore(view.data)
        snap_index = self.storage.snapshot_meta().index
        seed = int.from_bytes(os.urandom(8), "big")
        core_cfg = self.cfg.core_config()
        max_command = MAX_MESSAGE_BYTES
        if self.cfg.transport == "udp":
            # Every append and snapshot chunk must fit one datagram; a command
            # too big for any append is refused when it arrives.
            lim = udp_core_limits(self.cfg.udp_max_datagram_bytes, core_cfg.max_append_entries)
            core_cfg = msgspec.structs.replace(
                core_cfg, max_append_bytes=lim.max_append_bytes,
                snapshot_chunk_bytes=lim.snapshot_chunk_bytes)
            max_command = lim.max_entry_data_bytes
        self.core = make_core(self.cfg.algorithm, node_id, self.storage, core_cfg,
                              random.Random(seed), initial(self.cfg.initial_ids()))
        self._core = self.core
        self._decode = peer_decoder(self.cfg.algorithm)
        self._last_role = self.core.role
        self._last_term = self.core.term

        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.keys: CurveKeys = read_keys(run_dir / "keys")
        self.zap = ZapHandler(self.ctx, {self.keys.public}, self._auth_rejected)
        self.links = LinkFilter(random.Random(seed ^ 0x5EED))
        self.links.set_rules(load_links(ndir / "links.json"))
        self._client_addrs = {n.id: n.client_addr() for n in self.cfg.nodes}
        self.peer_book = PeerBook(node_id, run_dir, {n.id: n for n in self.cfg.nodes},
                                  transport_addr(self.cfg.transport, self.spec),
                                  self._client_addrs,
                                  lambda event, **kw: self.log.info(event, **kw))
        self.transport: PeerTransport = FaultyTransport(self._make_transport(), self.links)
        self.peer_book.attach(self.transport)
        # Client and control frames over the limit still reach the loop, to
        # be answered `too_large`, up to a hard limit (node/config.py).
        self.client_sock, self.control_sock = (
            make_server_socket(self.ctx, addr, self.keys,
                               max_frame_bytes=CLIENT_FRAME_HARD_LIMIT_BYTES,
                               send_queue_frames=CLIENT_QUEUE_FRAMES)
            for addr in (self.spec.client_addr(), self.spec.control_addr()))
        self.client_sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # node/replies.py
        self._replies = ClientReplies(self.client_sock)
        self._poller = zmq.Poller()
        self._watching_clients = True
        self.watches = WatchHub(node_id, self.kv, self._replies.push,
                                max_lag_revisions=self.cfg.watch_max_lag_revisions)
        self.api = ClientApi(
            node_id, self.core, self.kv, self._reply_client,
            self._client_addrs, self._bad_request, max_command,
            no_space=self._no_space, watches=self.watches,
            lease_extension_ms=self.cfg.max_election_timeout_ms())
        # Requests of a batch frame that the client drain's time budget left
        # for the next turns, in order, ahead of any new frame.
        self._client_backlog: collections.deque[
            tuple[list[bytes], bytes | ClientRequest]] = collections.deque()
        self._snapshotter = concurrent.futures.ThreadPoolExecutor(1, "snapshot")
        self.storage.remove_files_with(self._remove_files)
        self._floor = FloorRecorder(run_dir, node_id, self._snapshotter.submit)
        self._init_snapshots()
        self._control_deferred: list[tuple[list[bytes], concurrent.futures.Future[bytes]]] = []
        self._last_progress_log = time.monotonic()
        self._max_busy_s = 0.0
        self._sync_max_s = 0.0
        self._max_cpu_s = 0.0
        self.gc = GcPauses()
        # The leader last heard from and when; the longest silence of a
        # leader between two of its messages (shown in status, reset when
        # read): what an election timeout is measured against (§5.2).
        self._leader_heard: tuple[str, float] | None = None
        self._leader_gap_max_s = 0.0
        self._bytes_since_snapshot = 0
        self._last_image_bytes = self.storage.snapshot_image_size()
        self._reservation_logged = False
        self._logged_commit = self.core.log.commit
        self._ready_io = _ReadyIO(self)
        self.log.info("node_started", pid=os.getpid(), peer_addr=self.spec.peer_addr(),
                      client_addr=self.spec.client_addr(), transport=self.cfg.transport,
                      fsync=self.cfg.fsync, commit=self.core.log.commit,
                      last_index=self.core.log.last_index(), snapshot_index=snap_index)

    def _make_transport(self) -> PeerTransport:
        # The members of the configuration in force; others come and go
        # with it (node/peers.py).
        peers = self.peer_book.wanted(self.core.conf)
        if self.cfg.transport == "udp":
            return UdpTransport(
                self.id, (self.spec.host, self.spec.peer_port),
                peers, udp_mac_key(self.keys),
                self.cfg.udp_max_datagram_bytes,
                on_bad=lambda reason, detail: self._log_bad(
                    "bad_datagram", reason=reason, detail=detail[:200]),
                on_oversize=lambda dst, size: self._log_event(
                    self.log.error, "message_oversize",
                    {"to": dst, "bytes": size, "limit": self.cfg.udp_max_datagram_bytes}),
                on_unknown=self.peer_book.unknown_sender)
        return ZmqTransport(self.ctx, self.id, self.spec.peer_addr(), peers, self.keys,
                            on_unknown=self.peer_book.unknown_sender)

    def _log_state(self) -> tuple[int, str]:
        c = self._core
        return (c.term, c.role.value) if c is not None else (0, "follower")

    # --- the loop -------------------------------------------------------------

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        poller = self._poller
        peer_socks = self.transport.poll_sockets()
        for s in peer_socks:
            poller.register(s, zmq.POLLIN)
        poller.register(self.client_sock, zmq.POLLIN)
        poller.register(self.control_sock, zmq.POLLIN)
        poller.register(self.zap.socket, zmq.POLLIN)
        tick_s = self.cfg.tick_ms / 1000.0
        clock_from = time.monotonic()
        next_tick = clock_from + tick_s
        try:
            while True:
                now = time.monotonic()
                wake = next_tick
                due = self.transport.next_deadline_ms()
                if due is not None:
                    wake = min(wake, due / 1000.0)
                timeout_ms = max(0, int((wake - now) * 1000.0 + 0.999))
                if (self.core.has_ready() and self._stalled is None) or self._clients_waiting() \
                        or self._images_waiting():
                    timeout_ms = 0  # the last turn stopped at its budget
                events = dict(poller.poll(timeout_ms))
                busy_from = time.monotonic()
                cpu_from = time.thread_time()
                # Before any read is asked for in this turn: a lease must not
                # outlive a stall that the capped catch-up ticks hide.
                observe_clock(self.core, int((busy_from - clock_from) / tick_s))
                if self._stop_signalled and not self._stopping:
                    self.shutdown()
                if self.zap.socket in events:
                    self.zap.handle()
                if any(s in events for s in peer_socks) or due is not None:
                    self._receive_peers()
                if self.client_sock in events or self._clients_waiting():
                    self._receive_clients()
                if self.control_sock in events:
                    self._receive_control()
                now = time.monotonic()
                if now >= next_tick:
                    behind = int((now - next_tick) / tick_s) + 1
                    self._tick(min(behind, _MAX_CATCHUP_TICKS))
                    next_tick += behind * tick_s
                self._expire_leases()
                self._handle_ready()
                self.watches.serve()
                self._flush_replies()
                self._release_log_memory()
                self._advance_images()
                self._answer_deferred_control()
                self._record_floor()
                self._watch_disk()
                self._maybe_log_progress(now)
                self.gc.maybe_freeze(now)
                # How long the loop went without polling: what a stall costs
                # heartbeats and clients (shown in status, reset when read).
                busy = time.monotonic() - busy_from
                if busy > self._max_busy_s:
                    self._max_busy_s = busy
                # Of which the loop's own work: on a loaded machine a turn
                # also waits for a core, the disk and the interpreter lock.
                cpu = time.thread_time() - cpu_from
                if cpu > self._max_cpu_s:
                    self._max_cpu_s = cpu
                if self._stopping and (now >= self._stop_deadline or (
                        not self.core.has_ready() and not self._client_backlog
                        and self._may_exit(now))):
                    break
        finally:
            self._close()

    def _receive_peers(self) -> None:
        if self._stalled is not None:
            # Frozen: what peers send is lost, as to a paused process.
            lost = len(self.transport.receive())
            if not self._stalled_on_snapshot:
                self.disk.peer_messages_dropped += lost
            return
        received = self.transport.receive()
        if received:
            self._heard_from(received, time.monotonic())
        for src, data in received:
            try:
                msg = self._decode(data)
            except codec.DecodeError as e:
                self.counters["bad_messages"] += 1
                self._log_bad("bad_message", source=src, reason=str(e)[:200])
                continue
            if msg.src != src:
                self.counters["spoofed_messages"] += 1
                self._log_bad("bad_message", source=src, reason=f"claims to be from {msg.src}")
                continue
            if self.disk.state != "ok" and needs_space(msg, self.core.log):
                self.disk.peer_messages_dropped += 1
                continue
            self.core.step(msg)

    def _heard_from(self, received: Sequence[tuple[str, bytes]], now: float) -> None:
        """Note the leader's silence if one of `received` is from it."""
        leader = self.core.leader
        if leader is None or leader == self.id or all(src != leader for src, _ in received):
            return
        last = self._leader_heard
        if last is not None and last[0] == leader:
            self._leader_gap_max_s = max(self._leader_gap_max_s, now - last[1])
        self._leader_heard = (leader, now)

    # --- Ready ----------------------------------------------------------------

    def _reconfigure(self, conf: ConfState) -> None:
        self.peer_book.apply(conf)

    def _send(self, messages: Sequence[PeerMessage | PaxosMessage]) -> None:
        for m in messages:
            self.transport.send(m.dst, codec.encode(m))

    def _install(self, snapshot: Snapshot) -> None:
        self._install_received(snapshot)

    def _finish(self, rd: Ready[Any]) -> None:
        self._apply_reads(rd)
        for name, kw in rd.events:
            self._log_event(self.log.info, name, kw)
        if rd.soft_state is not None:
            self._role_changed(rd.soft_state)

    def _reached(self, step: Step) -> None:
        if step is Step.APPLIED_EARLY:
            # Their answers leave now, not at the end of the turn: a commit
            # is what the client waits for.
            self._flush_replies()

    def _apply_entries(self, entries: Sequence[Entry]) -> None:
        apply, answer, normal = self.kv.apply, self.api.applied, EntryKind.NORMAL
        weight = 0
        for e in entries:
            weight += len(e.data)
            # A no-op entry (empty data) only advances the applied index.
            answer(apply(e.index, e.data if e.kind is normal else b""), e.index, e.term)
        self._bytes_since_snapshot += weight

    def _apply_reads(self, rd: Ready[Any]) -> None:
        for rs in rd.read_states:
            self.api.read_ready(rs.ctx, rs.index)
        for ctx in rd.dropped_reads:
            self.api.read_dropped(ctx)
        self.api.serve_reads()
        self._maybe_snapshot()

    def _expire_leases(self) -> None:
        """A leader proposes the expiry of leases whose deadline passed."""
        ids = self.api.expire_leases()
        if ids:
            self.log.info("lease_expiry_proposed", leases=ids[:8], count=len(ids))

    def _role_changed(self, soft: SoftState) -> None:
        role, term = Role(soft.role), soft.term
        # Leading again in a later term counts as a loss too: what this node
        # proposed in the earlier term may have been truncated meanwhile.
        if self._last_role is Role.LEADER and (role is not Role.LEADER or term != self._last_term):
            self.api.lost_leadership()
        if role is Role.LEADER and (self._last_role is not Role.LEADER or term != self._last_term):
            self.api.became_leader()
        self._last_role, self._last_term = role, term

    # --- Controlled -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        c = self.core
        peers = {
            p: {"match": pr.match, "next": pr.next, "state": pr.state.value,
                "active": pr.recent_active, "voter": c.conf.is_voter(p)}
            for p, pr in c.progress.items()
        } if c.role is Role.LEADER else {}
        tstats = dict(self.transport.stats)
        max_busy_ms, self._max_busy_s = round(self._max_busy_s * 1000, 3), 0.0
        max_cpu_ms, self._max_cpu_s = round(self._max_cpu_s * 1000, 3), 0.0
        leader_gap_ms, self._leader_gap_max_s = round(self._leader_gap_max_s * 1000, 3), 0.0
        sync_ms, self._sync_max_s = round(self._sync_max_s * 1000, 3), 0.0
        return {
            "loop_max_busy_ms": max_busy_ms, "loop_max_cpu_ms": max_cpu_ms,
            "wal_sync_max_ms": sync_ms,
            **self.gc.status(),
            "leader_gap_max_ms": leader_gap_ms,
            "id": self.id, "role": c.role.value, "term": c.term, "leader": c.leader,
            "vote": c.vote, "commit": c.log.commit, "commit_term": c.log.term(c.log.commit),
            "applied": self.kv.applied_index,
            "log_first": c.log.first_index(), "log_last": c.log.last_index(),
            "snapshot_index": c.snapshot_meta.index, "peers": peers,
            "conf": conf_status(c),
            "links": {p: msgspec.to_builtins(r) for p, r in self.links.rules().items()},
            "pid": os.getpid(), "uptime_s": round(time.monotonic() - self.started, 3),
            "transport": self.cfg.transport, "fsync": self.cfg.fsync,
            "unsafe_bugs": sorted(self.unsafe_bugs),
            "keys": len(self.kv),
            "sessions": len(self.kv.sessions),
            "revision": self.kv.revision, "compacted": self.kv.compacted,
            "pending_requests": self.api.pending() + len(self._client_backlog),
            "uncommitted_bytes": c.uncommitted_bytes,
            "disk": {**self.disk.status(), "log_lines_dropped": self._log_lines_dropped()},
            **c.status_facts(),
            "counters": {
                **self.counters,
                "dropped_messages": c.counters.dropped_messages
                + tstats.get("dropped_send", 0) + tstats.get("dropped_by_filter", 0),
                "stale_messages": c.counters.stale_messages,
                "proposals_refused": c.counters.proposals_refused,
                "client_requests": self.api.counters.requests,
                "writes_acked": self.api.counters.writes_acked,
                "reads_served": self.api.counters.reads_served,
                "client_errors": dict(self.api.counters.by_error),
                "client_replies": self._replies.stats(),
                "watches": self.watches.stats(),
                "transport": tstats,
            },
        }

    def set_links(self, rules: dict[str, LinkRule]) -> None:
        # Rules may name nodes this node does not know yet (members added
        # after its log ends); only its own id makes no sense.
        if self.id in rules:
            raise ControlError("unknown_peer", f"{self.id} has no link to itself")
        self.links.set_rules(rules)
        self.log.info("link_faults_set",
                      rules={p: msgspec.to_builtins(r) for p, r in rules.items()})

    def transfer_leader(self, to: str) -> None:
        self._refuse_if_stalled()
        try:
            self.core.transfer_leader(to)
        except NotLeader as e:
            raise ControlError("not_leader", f"{self.id} is not the leader "
                               f"(leader: {e.leader or 'unknown'})") from None
        except ValueError as e:
            raise ControlError("unknown_peer", str(e)) from None

    def change_members(self, changes: list[MemberChange]) -> dict[str, Any]:
        return propose_members(self.core, changes)

    def compact(self) -> dict[str, Any]:
        self._refuse_if_stalled()
        started = self._maybe_snapshot(force=True)
        return {"started": started, "applied": self.kv.applied_index,
                "snapshot_index": self.core.snapshot_meta.index}

    def decree(self, value: str) -> dict[str, Any]:
        return start_decree(self.core, value)

    def digest(self) -> concurrent.futures.Future[dict[str, Any]]:
        return self._digest_job()

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        """SIGTERM/SIGINT. A handler runs between any two bytecodes of the
        loop, possibly half-way through a step of the core: it only sets a
        flag, and the loop stops gracefully between steps."""
        self._stop_signalled = True

    def shutdown(self) -> None:
        """Stop gracefully: hand leadership over, then leave. Called by the
        loop only (a signal or the control op `shutdown`), between steps."""
        if self._stopping:
            return
        self._stopping = True
        budget = 2 * self.cfg.election_ticks * self.cfg.tick_ms / 1000.0
        self._stop_deadline = time.monotonic() + budget
        # A stalled log is frozen: it hands nothing over, it only leaves.
        target = self._best_successor() if self._stalled is None else None
        self.log.info("node_stopping", handing_to=target)
        if target is not None:
            self.core.transfer_leader(target)

    def _best_successor(self) -> str | None:
        voters = [p for p in self.core.conf.voters if p in self.core.progress]
        if self.core.role is not Role.LEADER or not voters:
            return None
        return max(voters, key=lambda p: self.core.progress[p].match)

    def _may_exit(self, now: float) -> bool:
        return self.core.role is not Role.LEADER or now >= self._stop_deadline

    # --- helpers ------------------------------------------------------------------

    def _maybe_log_progress(self, now: float) -> None:
        if now - self._last_progress_log < STATUS_LOG_INTERVAL_MS / 1000.0:
            return
        self._last_progress_log = now
        commit = self.core.log.commit
        if commit != self._logged_commit:
            self.log.info("commit_progress", commit=commit, applied=self.kv.applied_index,
                          committed_since=commit - self._logged_commit)
            self._logged_commit = commit

    def _bad_request(self, reason: str) -> None:
        self.counters["bad_requests"] += 1
        self._log_bad("bad_request", reason=reason[:200])

    def _auth_rejected(self, address: str, key: bytes) -> None:
        self.counters["auth_rejected"] += 1
        self._log_bad("auth_rejected", address=address, key=key.hex()[:16])

    def _log_bad(self, event: str, **kw: Any) -> None:
        self._log_event(self.log.warning, event, kw)

    def _log_event(self, emit: Callable[..., Any], event: str, kw: dict[str, Any]) -> None:
        """Log `event`, or count it if a line of it from the same source was
        written less than a second ago (node/logs.py, RATE_LIMITED_EVENTS)."""
        if event in RATE_LIMITED_EVENTS:
            field = RATE_LIMITED_EVENTS[event]
            left_out = self._limiter.admit((event, kw.get(field) if field else None))
            if left_out is None:
                return
            if left_out:
                kw = {**kw, "suppressed": left_out}
        emit(event, **kw)

    def _close(self) -> None:
        self._image_jobs = []
        self._snapshotter.shutdown(wait=True)
        self._reap_writes()
        self._check_local_snapshot()
        try:
            self.storage.close()
        except StorageError as e:
            # A full disk: what did not reach it was never acknowledged.
            self.storage.abandon()
            self.log.error("disk_full", error=str(e), free_bytes=self.disk.free_bytes)
        self.transport.close()
        self.gc.close()
        for s in (self.client_sock, self.control_sock, self.zap.socket):
            s.close(linger=0)
        self.log.info("node_stopped", commit=self.core.log.commit, applied=self.kv.applied_index)


class _ReadyIO:
    """The runner's side of each step of a Ready (node/raft/ready.py)."""

    def __init__(self, r: NodeRunner) -> None:
        self.reconfigure = r._reconfigure
        self.send = r._send
        self.persist = r._persist
        self.install = r._install
        self.apply = r._apply_entries
        self.finish = r._finish
        self.reached = r._reached
