"""Constants and defaults of a node, with their units in their names.

Nothing here does I/O; the runner and the CLI read these values.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

# Protocol timing, in ticks of the core's logical clock.
TICK_MS = 10
HEARTBEAT_TICKS = 2
ELECTION_TICKS = 15
# How linearizable reads are confirmed (docs/PROTOCOL.md, "Reads"): "index"
# by a heartbeat round per batch of reads (thesis §6.4); "lease" without a
# round while a majority answered a heartbeat sent within the election
# timeout minus LEASE_DRIFT_TICKS, which relies on bounded clock drift
# (thesis §6.4.1).
READ_MODES = ("index", "lease")
# The margin a lease leaves for the nodes' clocks running at different
# rates: 3 of 15 ticks allows 20% drift between two nodes' clocks.
LEASE_DRIFT_TICKS = 3

# Replication flow control.
MAX_APPEND_ENTRIES = 512
MAX_APPEND_BYTES = 1024 * 1024
MAX_INFLIGHT_APPENDS = 64
SNAPSHOT_CHUNK_BYTES = 256 * 1024
MAX_APPLY_BYTES = 4 * 1024 * 1024
# Overload control: a leader refuses a proposal (`busy`) while this many bytes
# of its own term's proposals wait for their commit, unless none do (a single
# proposal of any size is always taken). Followers that cannot keep up, a slow
# disk or more clients than the cluster can serve then meet backpressure
# instead of an ever longer uncommitted log (etcd: MaxUncommittedEntriesSize).
MAX_UNCOMMITTED_BYTES = 32 * 1024 * 1024
# After a local snapshot the log keeps this many entries before it, so that a
# follower briefly behind is caught up by appends (etcd's default too).
CATCHUP_ENTRIES = 5_000
# The log holds at most about this many applied entries in memory; older
# ones are read back from the WAL for a follower that lags (node/raft/log.py).
# None: every entry until the next snapshot.
LOG_CACHE_ENTRIES = 10_000
# A learner is promoted to voter only once its log is within this many
# entries of the leader's (thesis §4.2.1): a voter far behind would hold back
# every commit that needs it.
PROMOTE_MAX_LAG_ENTRIES = 1_000

# The largest wire message a node accepts; anything bigger is a bad message.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# A batch frame of client requests or replies (node/api.py) is cut before
# it grows past this, well under MAX_MESSAGE_BYTES.
CLIENT_BATCH_MAX_BYTES = 1024 * 1024
# What a node takes in one client frame, checked before any of it is decoded
# (docs/SECURITY.md, "Limits on input"). A batch frame holds at most
# MAX_BATCH_REQUESTS requests in at most BATCH_FRAME_MAX_BYTES (the items plus
# the array header join_batch puts before them): decoding the worst such
# frame (one key repeated in every map) was measured at 15 ms. A request is a
# map of at most MAX_REQUEST_FIELDS keys (a request has 8 at most).
MAX_BATCH_REQUESTS = 4096
BATCH_FRAME_MAX_BYTES = CLIENT_BATCH_MAX_BYTES + 5
MAX_REQUEST_FIELDS = 16
# libzmq closes the connection of a client frame past this without the node
# seeing it; a frame between MAX_MESSAGE_BYTES and this gets `too_large`.
CLIENT_FRAME_HARD_LIMIT_BYTES = 2 * MAX_MESSAGE_BYTES
# Answer frames queued in libzmq per client connection; the node holds the
# rest (node/replies.py). Requests queue as for peers (PEER_QUEUE_MSGS): a
# shorter receive queue stops libzmq reading the connection, its heartbeat
# answers too, and a client sending faster than the node takes was cut off.
CLIENT_QUEUE_FRAMES = 16
# Answers one loop turn may produce, or that may wait for clients' queues to
# take them, before the node stops taking client frames (they wait in their
# queues, pushing back on their clients): what bounds the memory of many
# reads of large values (node/replies.py). A connection that takes none of
# its answers for CLIENT_STUCK_TIMEOUT_MS loses them.
CLIENT_TURN_REPLY_BYTES = 8 * 1024 * 1024
CLIENT_STUCK_TIMEOUT_MS = 1_000
# Watches (node/watch.py). A watch costs the node a cursor into the history,
# not a buffer: its events are read from the history when its connection can
# take them. One that falls WATCH_MAX_LAG_REVISIONS behind the store is
# cancelled (`slow_watcher`), as is one whose cursor was compacted away. A
# frame of events holds whole revisions, about WATCH_FRAME_BYTES; serving
# watches takes at most WATCH_TURN_BUDGET_MS of a loop turn (the rest waits
# for the next turn). A watch that sent nothing for WATCH_KEEPALIVE_MS gets a
# progress notification, by which a connection that went away is found.
WATCH_MAX_WATCHES = 10_000
WATCH_MAX_LAG_REVISIONS = 50_000
WATCH_FRAME_BYTES = 256 * 1024
WATCH_TURN_BUDGET_MS = 5
WATCH_KEEPALIVE_MS = 10_000

# Peer transport (node/transport/zmq.py). A cut link must lose messages rather
# than deliver them late in a burst: queues are short, and a silent connection
# is dropped after PEER_HEARTBEAT_TIMEOUT_MS, losing what it still held.
PEER_HEARTBEAT_IVL_MS = 100
PEER_HEARTBEAT_TIMEOUT_MS = 300
PEER_HEARTBEAT_TTL_MS = 300
PEER_RECONNECT_IVL_MS = 50
PEER_RECONNECT_IVL_MAX_MS = 500
PEER_CONNECT_TIMEOUT_MS = 1000
# A CURVE handshake waits for the ZAP handler, which runs in the node's loop.
PEER_HANDSHAKE_TIMEOUT_MS = 2000
PEER_QUEUE_MSGS = 1000
# At most this many messages leave one receive() call, so a flooding peer
# cannot hold the loop; the rest wait for the next iteration.
PEER_RECV_BATCH_MSGS = 4096
# CURVE sends each frame as a MESSAGE command: 8 bytes of name, 8 of nonce,
# 16 of MAC and 1 of flags. The receive limit must allow for them.
CURVE_FRAME_OVERHEAD_BYTES = 33
# ZAP: every CURVE server socket names this domain, and a ZAP answer for a key
# already rejected from the same address is not reported again (bounded memory).
ZAP_DOMAIN = "raftctl"
ZAP_REJECTS_REMEMBERED = 1024
ZAP_BATCH_REQUESTS = 256
# Link faults (node/transport/links.py): a reordered message is held back by
# between one and two times this long, so that later messages pass it.
LINK_REORDER_HOLD_MS = 20
# UDP peer transport (node/transport/udp.py): one message per datagram, never
# more than the cluster's datagram limit, which every node must share. The
# default is never fragmented on loopback (MTU 64 KiB); the leader's batches
# and snapshot chunks are sized from the limit by `udp_core_limits`.
UDP_MAX_DATAGRAM_BYTES = 60_000
# The limit for a real network path with an MTU of 1,400 bytes: 1,400 minus an
# IPv6 header (40) and a UDP header (8), so no datagram is ever fragmented.
UDP_SMALL_PATH_DATAGRAM_BYTES = 1_352
# The smallest limit accepted (every message except a batch of entries or a
# snapshot chunk is far smaller) and the largest UDP payload over IPv4.
UDP_MIN_DATAGRAM_BYTES = 512
UDP_MAX_IPV4_DATAGRAM_BYTES = 65_507
# A node id travels in every datagram header, preceded by a one-byte length.
UDP_MAX_NODE_ID_BYTES = 64
# Kernel buffers asked for (Linux grants at most net.core.rmem_max/wmem_max):
# a follower's receive buffer must hold the leader's pipeline of appends, or
# it overflows and the batches are lost.
UDP_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
# A bad datagram is reported (`on_bad`) at most once per reason this often.
UDP_BAD_REPORT_INTERVAL_MS = 1_000

# The key-value state machine (node/state/kv.py). Changing any of these changes what
# replicas accept or keep, so every node of a cluster must use the same values.
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1024 * 1024
# Client sessions (node/state/sessions.py, thesis §6.3). A session idle for longer
# than SESSION_TIMEOUT_MS of log time expires; past MAX_SESSIONS the least
# recently active goes. Either way its later writes are refused, never
# applied. A session holds the answers of at most MAX_OUTSTANDING_PER_SESSION
# writes its client has not released; they hold no value but a failed cas's
# current value or a put/delete's previous one when asked for (`prev`).
SESSION_TIMEOUT_MS = 10 * 60 * 1000
MAX_SESSIONS = 16_384
MAX_OUTSTANDING_PER_SESSION = 1024
# Revisions (node/state/mvcc.py): the history of changes kept for reads at a
# past revision and watches from one. Past either bound the oldest revisions
# are compacted away, on every replica alike: HISTORY_REVISIONS is 10 s of
# writes at the cluster's fastest (docs/STORAGE.md, "Memory"), so a watcher
# that reconnects after a node's death resumes where it was.
HISTORY_REVISIONS = 100_000
HISTORY_MAX_BYTES = 64 * 1024 * 1024
# A transaction holds at most this many compares and operations (etcd's
# default --max-txn-ops), and what its reads answer is cut at this many bytes
# of keys and values (its answer is kept in its session for retries).
MAX_TXN_OPS = 128
MAX_TXN_ANSWER_BYTES = 1024 * 1024
# A snapshot image is made of chunks of about this size: a turn of the loop
# encodes one at least (node/runner_snap.py). Chunks are part of an image's
# bytes, so every replica of a cluster must use the same.
KV_IMAGE_CHUNK_BYTES = 64 * 1024
# A local snapshot's image is encoded on the loop a piece of about this size
# at a time, as many pieces per turn as its time budget allows
# (node/runner_snap.py).
KV_IMAGE_PIECE_BYTES = 64 * 1024


_LEASE_NEEDS_CHECK_QUORUM = (
    "read_mode = \"lease\" needs check_quorum: only then do followers refuse votes "
    "while they hear from a leader, which is what keeps a new leader from being elected "
    "while the old one still serves reads from its lease")


class CoreConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of one `RaftCore`: timing in ticks, flow control, features."""

    election_ticks: int = ELECTION_TICKS
    heartbeat_ticks: int = HEARTBEAT_TICKS
    max_append_entries: int = MAX_APPEND_ENTRIES
    max_append_bytes: int = MAX_APPEND_BYTES
    max_inflight_appends: int = MAX_INFLIGHT_APPENDS
    snapshot_chunk_bytes: int = SNAPSHOT_CHUNK_BYTES
    max_apply_bytes: int = MAX_APPLY_BYTES
    max_uncommitted_bytes: int = MAX_UNCOMMITTED_BYTES
    catchup_entries: int = CATCHUP_ENTRIES
    log_cache_entries: int | None = LOG_CACHE_ENTRIES
    # The election timeout is election_ticks plus a random 0 to this many
    # minus one (§5.2); None: election_ticks (150-300 ms by default); 0
    # turns the randomization off (split votes then repeat).
    election_jitter_ticks: int | None = None
    promote_max_lag_entries: int = PROMOTE_MAX_LAG_ENTRIES
    prevote: bool = True
    check_quorum: bool = True
    read_mode: str = "index"  # one of READ_MODES
    lease_drift_ticks: int = LEASE_DRIFT_TICKS
    # A follower serves linearizable reads itself with a read index from
    # the leader (thesis §6.4.1); off, it refuses them (not_leader).
    follower_reads: bool = True

    def __post_init__(self) -> None:
        if self.read_mode not in READ_MODES:
            raise ValueError(f"read_mode {self.read_mode!r} is not one of {', '.join(READ_MODES)}")
        if self.read_mode == "lease" and not self.check_quorum:
            raise ValueError(_LEASE_NEEDS_CHECK_QUORUM)
        if not 0 <= self.lease_drift_ticks < self.election_ticks:
            raise ValueError("lease_drift_ticks must be at least 0 and below election_ticks")
        if self.heartbeat_ticks < 1:
            raise ValueError("heartbeat_ticks must be at least 1")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("election_ticks must be greater than heartbeat_ticks")
        if self.max_append_entries < 1 or self.max_append_bytes < 1:
            raise ValueError("append limits must be positive")
        if self.max_inflight_appends < 1:
            raise ValueError("max_inflight_appends must be at least 1")
        if self.snapshot_chunk_bytes < 1:
            raise ValueError("snapshot_chunk_bytes must be positive")
        if self.max_uncommitted_bytes < 1:
            raise ValueError("max_uncommitted_bytes must be positive")
        if self.catchup_entries < 0:
            raise ValueError("catchup_entries must not be negative")
        if self.log_cache_entries is not None and self.log_cache_entries < 0:
            raise ValueError("log_cache_entries must not be negative")
        if self.election_jitter_ticks is not None and self.election_jitter_ticks < 0:
            raise ValueError("election_jitter_ticks must not be negative")
        if self.promote_max_lag_entries < 0:
            raise ValueError("promote_max_lag_entries must not be negative")


# --- a cluster as the node process and the supervisor see it ----------------

FSYNC_POLICIES = ("always", "never")
TRANSPORTS = ("zmq", "udp")
# The consensus algorithm a cluster runs (node/consensus.py), fixed when it
# is created: a node's durable state means a promise and accepted values
# to Paxos, a term, a vote and a log to Raft.
ALGORITHMS = ("raft", "paxos")
# Where link faults are enforced besides the transport (raftctl/netns.py):
# "" in the transport only; "bridge" a namespace per node (root); "sandbox"
# all nodes in one user+network namespace (no root needed).
NETNS_MODES = ("", "bridge", "sandbox")
# A Unix socket path (sun_path) holds at most this many bytes on Linux.
IPC_PATH_MAX_BYTES = 107
# A local snapshot every this many applied entries (etcd's default too). Each
# one writes and fsyncs the whole state machine: at 10,000 a 60 MB state
# under full load was written every 1.4 s, and the disk traffic stalled
# the nodes' WAL syncs long enough for a leader to lose its quorum.
SNAPSHOT_ENTRIES = 100_000
SNAPSHOT_BYTES = 64 * 1024 * 1024
# An image writes the whole state again (keys, values and history): once the
# last one was at least SNAPSHOT_RATIO_FLOOR_BYTES, a snapshot also waits
# until the commands applied since it add up to `snapshot_log_ratio` times
# its size, so images never write more than the log they replace (as Redis
# rewrites its append-only file once it has doubled). At 64 clients with
# 100-byte values a 38 MB image came every 100,000 entries (13 MB of
# commands): 15% of a follower's CPU went into encoding images. Below the
# floor images are cheap, and the entry and byte bounds alone decide.
SNAPSHOT_LOG_RATIO = 1.0
SNAPSHOT_RATIO_FLOOR_BYTES = 4 * 1024 * 1024
STATUS_LOG_INTERVAL_MS = 5_000


class NodeSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One node's identity and addresses."""

    id: str
    host: str = "127.0.0.1"
    peer_port: int
    client_port: int
    control_port: int
    # Set in sandbox mode, where the nodes' network is private: clients and
    # the supervisor reach the node through Unix sockets in this directory,
    # which every network namespace on the machine can open.
    ipc_dir: str = ""

    def peer_addr(self) -> str:
        return f"tcp://{self.host}:{self.peer_port}"

    def peer_addr_from(self, src: NodeSpec) -> str:
        """The endpoint `src` connects to: from its own address, so that a
        kernel rule matching the source address sees who sent a packet."""
        return f"tcp://{src.host}:0;{self.host}:{self.peer_port}"

    def client_addr(self) -> str:
        if self.ipc_dir:
            return f"ipc://{self.ipc_dir}/{self.id}.client"
        return f"tcp://{self.host}:{self.client_port}"

    def control_addr(self) -> str:
        if self.ipc_dir:
            return f"ipc://{self.ipc_dir}/{self.id}.control"
        return f"tcp://{self.host}:{self.control_port}"


class ClusterConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a node needs to join its cluster (the run directory's
    `cluster.json` holds it under the key `config`)."""

    name: str = "default"
    transport: str = "zmq"
    algorithm: str = "raft"
    # Every node process the supervisor knows, with its addresses; which of
    # them vote is the replicated configuration's business (docs/MEMBERSHIP.md).
    nodes: list[NodeSpec]
    # The voters the cluster was created with: the configuration in force
    # where a log starts from nothing. Empty: all of `nodes` (a run
    # directory from before membership changes).
    initial_members: list[str] = []
    tick_ms: int = TICK_MS
    election_ticks: int = ELECTION_TICKS
    heartbeat_ticks: int = HEARTBEAT_TICKS
    # Randomization of the election timeout (§5.2): None is election_ticks,
    # 0 turns it off.
    election_jitter_ticks: int | None = None
    fsync: str = "always"
    snapshot_entries: int = SNAPSHOT_ENTRIES
    snapshot_bytes: int = SNAPSHOT_BYTES  # of commands applied since the last snapshot
    # Past the floor, commands since the last snapshot / its image's bytes (0: off).
    snapshot_log_ratio: float = SNAPSHOT_LOG_RATIO
    catchup_entries: int = CATCHUP_ENTRIES  # kept in the log before a snapshot
    log_cache_entries: int | None = LOG_CACHE_ENTRIES  # applied entries held in memory
    promote_max_lag_entries: int = PROMOTE_MAX_LAG_ENTRIES
    max_append_entries: int = MAX_APPEND_ENTRIES
    max_inflight_appends: int = MAX_INFLIGHT_APPENDS
    max_uncommitted_bytes: int = MAX_UNCOMMITTED_BYTES
    udp_max_datagram_bytes: int = UDP_MAX_DATAGRAM_BYTES
    # Rules of the replicated state machine (node/state/sessions.py): every node
    # applies them, so they are the cluster's, fixed for its life.
    session_timeout_ms: int = SESSION_TIMEOUT_MS
    max_sessions: int = MAX_SESSIONS
    # History of revisions kept (node/state/mvcc.py): rules of the state too.
    history_revisions: int = HISTORY_REVISIONS
    history_max_bytes: int = HISTORY_MAX_BYTES
    # Linearizable reads (CoreConfig): how the leader confirms them, and
    # whether followers serve them too (with a read index from the leader).
    read_mode: str = "index"
    lease_drift_ticks: int = LEASE_DRIFT_TICKS
    follower_reads: bool = True
    # A watcher this many revisions behind is cancelled (node/watch.py); each
    # node's own, unlike the history bounds.
    watch_max_lag_revisions: int = WATCH_MAX_LAG_REVISIONS
    # Kernel mode (raftctl/netns.py), one of NETNS_MODES; "" is off. Set by
    # `raftctl up --netns`, which also sets the nodes' addresses. Run
    # directories from before the sandbox mode hold a bool: false is "",
    # true was the bridge.
    netns: str | bool = ""

    def __post_init__(self) -> None:
        if isinstance(self.netns, bool):
            msgspec.structs.force_setattr(self, "netns", "bridge" if self.netns else "")

    def kernel_mode(self) -> str:
        """`netns` as the mode name ("" when off)."""
        return self.netns if isinstance(self.netns, str) else ""

    def initial_ids(self) -> list[str]:
        """The voters of the cluster's initial configuration."""
        return list(self.initial_members) or [n.id for n in self.nodes]

    def node(self, node_id: str) -> NodeSpec:
        for n in self.nodes:
            if n.id == node_id:
                return n
        names = ", ".join(n.id for n in self.nodes)
        raise KeyError(f"node {node_id} is not in cluster {self.name} (nodes: {names})")

    def max_election_timeout_ms(self) -> int:
        """The longest election timeout a node of this cluster may draw (§5.2):
        what a new leader adds to every lease's deadline (node/lessor.py)."""
        jitter = self.election_ticks if self.election_jitter_ticks is None \
            else self.election_jitter_ticks
        return (self.election_ticks + jitter) * self.tick_ms

    def core_config(self) -> CoreConfig:
        return CoreConfig(
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            max_append_entries=self.max_append_entries,
            max_inflight_appends=self.max_inflight_appends,
            max_uncommitted_bytes=self.max_uncommitted_bytes,
            catchup_entries=self.catchup_entries,
            log_cache_entries=self.log_cache_entries,
            election_jitter_ticks=self.election_jitter_ticks,
            promote_max_lag_entries=self.promote_max_lag_entries,
            read_mode=self.read_mode,
            lease_drift_ticks=self.lease_drift_ticks,
            follower_reads=self.follower_reads,
        )

    def problems(self) -> list[str]:
        """Every reason this config cannot run, as `field: message` lines."""
        out: list[str] = []
        if not self.nodes:
            out.append("nodes: a cluster needs at least one node")
        if self.transport not in TRANSPORTS:
            out.append(f"transport: {self.transport!r} is not one of {', '.join(TRANSPORTS)}")
        if self.algorithm not in ALGORITHMS:
            out.append(f"algorithm: {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if self.netns not in NETNS_MODES:
            modes = ", ".join(m for m in NETNS_MODES if m)
            out.append(f"netns: {self.netns!r} is not one of {modes} (or empty: off)")
        elif self.netns == "sandbox" and not all(n.ipc_dir for n in self.nodes):
            out.append("netns: sandbox mode needs the addresses `raftctl up --netns=sandbox` "
                       "gives the nodes; do not set it in a config file")
        if self.fsync not in FSYNC_POLICIES:
            out.append(f"fsync: {self.fsync!r} is not one of {', '.join(FSYNC_POLICIES)}")
        if self.tick_ms < 1:
            out.append("tick_ms: must be at least 1")
        if self.election_ticks <= self.heartbeat_ticks:
            out.append("election_ticks: must be greater than heartbeat_ticks")
        if self.heartbeat_ticks < 1:
            out.append("heartbeat_ticks: must be at least 1")
        if self.snapshot_entries < 1:
            out.append("snapshot_entries: must be at least 1")
        if self.snapshot_bytes < 1:
            out.append("snapshot_bytes: must be at least 1")
        if not 0 <= self.snapshot_log_ratio <= 100:
            out.append("snapshot_log_ratio: must be from 0 (off) to 100")
        if self.max_uncommitted_bytes < 1:
            out.append("max_uncommitted_bytes: must be at least 1")
        if self.catchup_entries < 0:
            out.append("catchup_entries: must not be negative")
        if self.log_cache_entries is not None and self.log_cache_entries < 0:
            out.append("log_cache_entries: must not be negative")
        if self.election_jitter_ticks is not None and self.election_jitter_ticks < 0:
            out.append("election_jitter_ticks: must not be negative")
        if self.promote_max_lag_entries < 0:
            out.append("promote_max_lag_entries: must not be negative")
        if self.read_mode not in READ_MODES:
            out.append(f"read_mode: {self.read_mode!r} is not one of {', '.join(READ_MODES)}")
        elif self.read_mode == "lease" and self.algorithm == "paxos":
            out.append("read_mode: \"lease\" is for Raft; a paxos cluster confirms every "
                       "read with a round of its acceptors, so leave it at \"index\"")
        if not 0 <= self.lease_drift_ticks < self.election_ticks:
            out.append("lease_drift_ticks: must be at least 0 and below election_ticks")
        strangers = sorted(set(self.initial_members) - {n.id for n in self.nodes})
        if strangers:
            out.append(f"initial_members: {', '.join(strangers)} not among the nodes")
        if self.session_timeout_ms < 1:
            out.append("session_timeout_ms: must be at least 1")
        if self.max_sessions < 1:
            out.append("max_sessions: must be at least 1")
        if self.history_revisions < 1:
            out.append("history_revisions: must be at least 1")
        if self.history_max_bytes < 1:
            out.append("history_max_bytes: must be at least 1")
        if self.watch_max_lag_revisions < 1:
            out.append("watch_max_lag_revisions: must be at least 1")
        if not UDP_MIN_DATAGRAM_BYTES <= self.udp_max_datagram_bytes <= UDP_MAX_IPV4_DATAGRAM_BYTES:
            out.append(f"udp_max_datagram_bytes: {self.udp_max_datagram_bytes} is not between "
                       f"{UDP_MIN_DATAGRAM_BYTES} and {UDP_MAX_IPV4_DATAGRAM_BYTES}")
        seen_ids: dict[str, int] = {}
        seen_ports: dict[tuple[str, int], str] = {}
        for i, n in enumerate(self.nodes):
            where = f"nodes[{i}]"
            if not n.id or not n.id.replace("-", "").replace("_", "").isalnum() \
                    or not n.id.isascii() or len(n.id) > UDP_MAX_NODE_ID_BYTES:
                out.append(f"{where}.id: {n.id!r} must be 1-64 ASCII letters, digits, '-' or '_'")
            if n.id in seen_ids:
                out.append(f"{where}.id: {n.id} is already used by nodes[{seen_ids[n.id]}]")
            seen_ids.setdefault(n.id, i)
            if n.ipc_dir and len(n.control_addr().encode()) - len("ipc://") > IPC_PATH_MAX_BYTES:
                out.append(f"{where}.ipc_dir: {n.control_addr()} is longer than a Unix socket "
                           f"path may be ({IPC_PATH_MAX_BYTES} bytes); use a shorter run directory")
            for fname in ("peer_port", "client_port", "control_port"):
                port = getattr(n, fname)
                if not 1 <= port <= 65535:
                    out.append(f"{where}.{fname}: {port} is not a port number (1-65535)")
                    continue
                key = (n.host, port)
                if key in seen_ports:
                    out.append(f"{where}.{fname}: port {port} is already used by {seen_ports[key]}")
                seen_ports.setdefault(key, where)
        return out


# Durable storage (node/storage/wal.py): a WAL segment is closed before a write would
# take it past this size; a single larger record gets a segment of its own.
WAL_SEGMENT_BYTES = 64 * 1024 * 1024



def node_dir(run_dir: Path, node_id: str) -> Path:
    """Where one node keeps its data, log file and link rules."""
    return run_dir / "nodes" / node_id
