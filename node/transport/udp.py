"""The UDP peer transport (one socket per node, one MAC-sealed datagram per
message) and `udp_core_limits`, which sizes the leader's batches to fit one.

Nothing here blocks or retries: a datagram that cannot leave at once, or fails
any check on arrival, is counted and dropped, as a lossy network would drop it.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import socket
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from node import codec
from node.config import (
    MAX_APPEND_ENTRIES,
    PEER_RECV_BATCH_MSGS,
    UDP_BAD_REPORT_INTERVAL_MS,
    UDP_MAX_DATAGRAM_BYTES,
    UDP_MAX_IPV4_DATAGRAM_BYTES,
    UDP_MAX_NODE_ID_BYTES,
    UDP_MIN_DATAGRAM_BYTES,
    UDP_SOCKET_BUFFER_BYTES,
)
from node.raft.log import ENTRY_OVERHEAD_BYTES
from node.raft.messages import AppendEntries, Entry, EntryKind, InstallSnapshot, SnapshotMeta
from node.transport.auth import CurveKeys

__all__ = [
    "DATAGRAM_OVERHEAD_MAX_BYTES",
    "UdpCoreLimits",
    "UdpTransport",
    "seal_datagram",
    "udp_core_limits",
    "udp_mac_key",
]

# Datagram, version 1:
#   magic (1) | version (1) | key id (4) | len (1) | sender id | len (1) | receiver id
#   | payload | MAC (16): HMAC-SHA256 of everything before it, cut to 128 bits
#   as in RFC 4868 (on CPUs with SHA instructions it is several times faster
#   than hashlib's BLAKE2b on a full datagram).
# The key id is derived from the MAC key, so a datagram of another cluster is
# told apart from a forged or damaged one in the log; only the MAC decides.
_MAGIC = 0xB7
_VERSION = 1
_KEY_ID_BYTES = 4
_MAC_BYTES = 16
_FIXED_HEADER_BYTES = 2 + _KEY_ID_BYTES + 1 + 1
# The most a datagram adds to its payload: both ids at their longest.
DATAGRAM_OVERHEAD_MAX_BYTES = _FIXED_HEADER_BYTES + 2 * UDP_MAX_NODE_ID_BYTES + _MAC_BYTES
_MIN_DATAGRAM_BYTES = _FIXED_HEADER_BYTES + 2 + _MAC_BYTES
# Larger than any UDP payload, so recvfrom_into never truncates one.
_RECV_BUFFER_BYTES = 65_536

_MAC_KEY_DOMAIN = b"raftctl/udp/peer-mac/v1"
_KEY_ID_DOMAIN = b"raftctl/udp/key-id/v1"


def udp_mac_key(keys: CurveKeys) -> bytes:
    """The cluster's 32-byte datagram MAC key: HMAC-SHA256 of a domain string
    under the cluster's secret key, so it is never the CURVE key itself."""
    return hmac.digest(keys.secret, _MAC_KEY_DOMAIN, "sha256")


def _key_id(mac_key: bytes) -> bytes:
    return hmac.digest(mac_key, _KEY_ID_DOMAIN, "sha256")[:_KEY_ID_BYTES]


def _mac_proto(mac_key: bytes) -> hmac.HMAC:
    if not 16 <= len(mac_key) <= 64:
        raise ValueError(f"a MAC key must be 16 to 64 bytes, not {len(mac_key)}")
    return hmac.new(mac_key, digestmod="sha256")


def _id_bytes(node_id: str) -> bytes:
    raw = node_id.encode()
    if not 1 <= len(raw) <= UDP_MAX_NODE_ID_BYTES:
        raise ValueError(
            f"node id {node_id!r} must be 1 to {UDP_MAX_NODE_ID_BYTES} bytes of UTF-8 for UDP")
    return raw


def _header(key_id: bytes, src: bytes, dst: bytes) -> bytes:
    return bytes((_MAGIC, _VERSION)) + key_id + bytes((len(src),)) + src + bytes((len(dst),)) + dst


def seal_datagram(mac_key: bytes, src: str, dst: str, payload: bytes) -> bytes:
    """The datagram that carries `payload` from `src` to `dst` in the cluster
    whose MAC key is `mac_key` (what `UdpTransport.send` puts on the wire)."""
    header = _header(_key_id(mac_key), _id_bytes(src), _id_bytes(dst))
    h = _mac_proto(mac_key)
    h.update(header)
    h.update(payload)
    return header + payload + h.digest()[:_MAC_BYTES]


def _check_max_datagram(max_datagram: int) -> None:
    if not UDP_MIN_DATAGRAM_BYTES <= max_datagram <= UDP_MAX_IPV4_DATAGRAM_BYTES:
        raise ValueError(f"the datagram limit must be {UDP_MIN_DATAGRAM_BYTES} to "
                         f"{UDP_MAX_IPV4_DATAGRAM_BYTES} bytes, not {max_datagram}")


# --- sizing the leader's messages --------------------------------------------

_U64_MAX = 2**63 - 1
_LONGEST_ID = "x" * UDP_MAX_NODE_ID_BYTES


def _array_header_bytes(n: int) -> int:
    return 1 if n < 16 else 3 if n < 65_536 else 5


def _bin_header_bytes(n: int) -> int:
    return 2 if n < 256 else 3 if n < 65_536 else 5


# Every integer at its widest (9 bytes of msgpack), both ids at their longest.
_APPEND_FIXED_BYTES = len(codec.encode(AppendEntries(
    term=_U64_MAX, src=_LONGEST_ID, dst=_LONGEST_ID, prev_index=_U64_MAX,
    prev_term=_U64_MAX, entries=[], commit=_U64_MAX))) - _array_header_bytes(0)
_CHUNK_FIXED_BYTES = len(codec.encode(InstallSnapshot(
    term=_U64_MAX, src=_LONGEST_ID, dst=_LONGEST_ID, meta=SnapshotMeta(_U64_MAX, _U64_MAX),
    offset=_U64_MAX, data=b"", done=False, size=_U64_MAX))) - _bin_header_bytes(0)
# An entry's encoding beyond its data, for data under 64 KiB (any that fits).
_ENTRY_ENCODING_MAX_BYTES = len(msgspec.msgpack.encode(
    Entry(_U64_MAX, _U64_MAX, EntryKind.NOOP, bytes(256)))) - 256


def _worst_append_bytes(max_bytes: int, max_entries: int) -> int:
    # RaftLog.slice counts an entry as len(data) + ENTRY_OVERHEAD_BYTES, which
    # is less than msgpack spends on it: each entry may add the difference.
    n = max(1, min(max_entries, max_bytes // ENTRY_OVERHEAD_BYTES))
    return (_APPEND_FIXED_BYTES + _array_header_bytes(n) + max_bytes
            + n * (_ENTRY_ENCODING_MAX_BYTES - ENTRY_OVERHEAD_BYTES))


def _worst_chunk_bytes(chunk: int) -> int:
    return _CHUNK_FIXED_BYTES + _bin_header_bytes(chunk) + chunk


def _largest(fits: Callable[[int], bool], hi: int) -> int:
    """The largest x in [0, hi] with fits(x), for a monotone `fits` true at 0."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


class UdpCoreLimits(NamedTuple):
    """The `CoreConfig` flow-control limits under which every AppendEntries and
    InstallSnapshot fits one datagram."""

    max_append_bytes: int
    snapshot_chunk_bytes: int

    @property
    def max_entry_data_bytes(self) -> int:
        """The largest command one entry may carry. `RaftLog.slice` sends a
        lone entry even when it is over `max_append_bytes`; such an entry
        would never fit, so the node must refuse the command up front."""
        return self.max_append_bytes - ENTRY_OVERHEAD_BYTES


def udp_core_limits(
    max_datagram: int, max_append_entries: int = MAX_APPEND_ENTRIES
) -> UdpCoreLimits:
    """The largest `max_append_bytes` and `snapshot_chunk_bytes` with which
    every AppendEntries of at most `max_append_entries` entries and every
    snapshot chunk, encoded and sealed with ids of any allowed length, stays
    within `max_datagram` bytes.

    Holds for batches made by `RaftLog.slice` whose entries each carry at most
    `max_entry_data_bytes` of data.
    """
    _check_max_datagram(max_datagram)
    if max_append_entries < 1:
        raise ValueError("max_append_entries must be at least 1")
    room = max_datagram - DATAGRAM_OVERHEAD_MAX_BYTES
    append = _largest(lambda b: _worst_append_bytes(b, max_append_entries) <= room, room)
    chunk = _largest(lambda c: _worst_chunk_bytes(c) <= room, room)
    return UdpCoreLimits(append, chunk)


# --- the transport -------------------------------------------------------------


class _Peer(NamedTuple):
    node_id: str
    sockaddr: Any  # as getaddrinfo gives it, for sendto
    source: tuple[str, int]  # host and port its datagrams must come from
    header: bytes  # of datagrams from this node to the peer


class _Bad(NamedTuple):
    reason: str  # the stats key
    # Called with the source address only if reported, so a flood costs little.
    detail: Callable[[str], str]
    # An authenticated sender that is not a peer (bad_peer): its id.
    sender: str = ""


def _resolve(host: str, port: int, family: int = 0) -> tuple[int, Any]:
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise ValueError(f"cannot resolve {host}:{port} for UDP: {e.strerror}") from None
    fam, _, _, _, sockaddr = infos[0]
    return fam, sockaddr


def _where(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}"


class UdpTransport:
    """`PeerTransport` over UDP: one non-blocking socket bound at `bind`,
    datagrams to and from `peers` (node id -> (host, port); this node's own
    id is ignored), one message each, sealed with a MAC under `mac_key` (see
    `udp_mac_key`) that covers the sender's and the receiver's ids.

    Dropped on arrival, counted in `stats` and reported through `on_bad(reason,
    detail)` at most once per UDP_BAD_REPORT_INTERVAL_MS per reason, where
    reason is the stats key: `bad_datagram` (malformed, truncated, over
    `max_datagram`), `bad_mac` (another cluster's key, forged or damaged),
    `bad_peer` (a valid sender that is not a peer), `bad_dst` (meant for
    another node) and `bad_source` (a peer's datagram from an address that is
    not that peer's); `recv_error` reports a failing socket. Each peer must
    send from the address it is configured with: bind a node on that address,
    not on a wildcard. A `bad_peer` datagram passed the MAC, so its sender
    holds the cluster's key: its id also goes to `on_unknown` (a member this
    node does not know yet, or one removed). Peers come and go with
    `set_peer` and `remove_peer` (membership changes).

    Replays: a datagram made with another cluster's key fails the MAC. Within
    the cluster a replayed datagram is a copy of a message once sent, which
    reaches only the node it was meant for, from the address of the peer that
    sent it: a delayed duplicate, which Raft tolerates (§2: safe under packet
    loss, duplication and reordering), so no sequence window is kept.

    `send` refuses a message whose datagram would exceed `max_datagram`
    (`oversize`, reported through `on_oversize(dst, datagram_bytes)` at most
    once per interval per peer) rather than truncate or fragment it into a
    second datagram; size the core's batches with `udp_core_limits`.
    """

    def __init__(
        self,
        node_id: str,
        bind: tuple[str, int],
        peers: dict[str, tuple[str, int]],
        mac_key: bytes,
        max_datagram: int = UDP_MAX_DATAGRAM_BYTES,
        *,
        on_bad: Callable[[str, str], None] | None = None,
        on_oversize: Callable[[str, int], None] | None = None,
        on_unknown: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        recv_batch: int = PEER_RECV_BATCH_MSGS,
    ) -> None:
        _check_max_datagram(max_datagram)
        self.node_id = node_id
        self.max_datagram = max_datagram
        self.stats: dict[str, int] = {
            "sent": 0, "received": 0, "dropped_send": 0, "unknown_dst": 0, "oversize": 0,
            "send_blocked": 0, "send_error": 0, "refused": 0, "recv_error": 0,
            "bad_datagram": 0, "bad_mac": 0, "bad_peer": 0, "bad_dst": 0, "bad_source": 0,
        }
        self._own = _id_bytes(node_id)
        self._mac = _mac_proto(mac_key)
        self._key_id = _key_id(mac_key)
        self._on_bad = on_bad
        self._on_oversize = on_oversize
        self._on_unknown = on_unknown
        self._clock = clock
        self._report_interval_s = UDP_BAD_REPORT_INTERVAL_MS / 1000.0
        self._reported: dict[str, float] = {}
        self._recv_batch = recv_batch
        self._buf = bytearray(_RECV_BUFFER_BYTES)
        self._view = memoryview(self._buf)

        family, bind_addr = _resolve(*bind)
        self._family = family
        self._peers: dict[str, _Peer] = {}
        self._peer_of: dict[bytes, _Peer] = {}
        for peer_id, addr in peers.items():
            self.set_peer(peer_id, addr)

        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            # No SO_REUSEADDR: on UDP it would let two nodes share a port.
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                # Refused or not, the kernel's default buffer still works.
                with contextlib.suppress(OSError):
                    self._sock.setsockopt(socket.SOL_SOCKET, opt, UDP_SOCKET_BUFFER_BYTES)
            self._sock.bind(bind_addr)
        except OSError:
            self._sock.close()
            raise
        self._fd = self._sock.fileno()
        # As the kernel reports them (Linux doubles the request for bookkeeping).
        self.rcvbuf_bytes: int = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.sndbuf_bytes: int = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)

    @property
    def address(self) -> tuple[str, int]:
        """The host and port the socket is bound to."""
        name = self._sock.getsockname()
        return name[0], name[1]

    def peers(self) -> dict[str, tuple[str, int]]:
        """Each peer and the host and port its datagrams go to."""
        return {p.node_id: p.source for p in self._peers.values()}

    def set_peer(self, peer: str, addr: tuple[str, int]) -> None:
        """Send to and take datagrams from `peer` at `addr` (host, port)
        from now on, replacing a known address."""
        if peer == self.node_id:
            return
        _, sockaddr = _resolve(addr[0], addr[1], self._family)
        raw = _id_bytes(peer)
        p = _Peer(peer, sockaddr, (sockaddr[0], sockaddr[1]),
                  _header(self._key_id, self._own, raw))
        self._peers[peer] = p
        self._peer_of[raw] = p

    def remove_peer(self, peer: str) -> None:
        """Forget `peer`: nothing more is sent to it, and its datagrams are
        dropped as a stranger's (`bad_peer`)."""
        p = self._peers.pop(peer, None)
        if p is not None:
            self._peer_of.pop(_id_bytes(peer), None)

    def poll_sockets(self) -> list[Any]:
        """The socket's file descriptor. Not the socket object: a `zmq.Poller`
        reports a non-zmq socket by its descriptor, so the caller's `s in
        events` test holds only for the descriptor."""
        return [self._fd]

    def send(self, dst: str, data: bytes) -> bool:
        """Send `data` to `dst` in one datagram, at once or not at all. False
        (counted in `dropped_send`) when `dst` is not a peer (`unknown_dst`),
        the datagram would exceed `max_datagram` (`oversize`), the socket
        buffer is full (`send_blocked`) or the kernel refuses it."""
        stats = self.stats
        peer = self._peers.get(dst)
        if peer is None:
            stats["unknown_dst"] += 1
            stats["dropped_send"] += 1
            return False
        size = len(peer.header) + len(data) + _MAC_BYTES
        if size > self.max_datagram:
            stats["oversize"] += 1
            stats["dropped_send"] += 1
            if self._on_oversize is not None and self._may_report(f"oversize:{dst}"):
                self._on_oversize(dst, size)
            return False
        h = self._mac.copy()
        h.update(peer.header)
        h.update(data)
        try:
            # Gathered by the kernel: the payload is never copied here.
            self._sock.sendmsg((peer.header, data, h.digest()[:_MAC_BYTES]), (), 0,
                               peer.sockaddr)
        except OSError as e:
            if isinstance(e, BlockingIOError) or e.errno == errno.ENOBUFS:
                stats["send_blocked"] += 1
            elif e.errno == errno.ECONNREFUSED:
                # An ICMP error left by an earlier datagram, reported on this
                # call by some systems; it says nothing about this one.
                stats["refused"] += 1
            else:
                stats["send_error"] += 1
            stats["dropped_send"] += 1
            return False
        stats["sent"] += 1
        return True

    def receive(self) -> list[tuple[str, bytes]]:
        """Every valid datagram ready now (at most `recv_batch` datagrams are
        read, bad ones included, so a flood cannot hold the loop; the socket
        stays readable if more wait), as (sender id, payload)."""
        out: list[tuple[str, bytes]] = []
        sock, view = self._sock, self._view
        for _ in range(self._recv_batch):
            try:
                n, addr = sock.recvfrom_into(self._buf)
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                # An ICMP port-unreachable for an earlier send; reading it
                # clears it.
                self.stats["refused"] += 1
                continue
            except OSError as e:
                self.stats["recv_error"] += 1
                if self._on_bad is not None and self._may_report("recv_error"):
                    self._on_bad("recv_error", f"recvfrom failed: {e.strerror}")
                break
            got = self._open(view[:n], addr)
            if isinstance(got, _Bad):
                self.stats[got.reason] += 1
                if got.sender and self._on_unknown is not None:
                    self._on_unknown(got.sender)
                if self._on_bad is not None and self._may_report(got.reason):
                    self._on_bad(got.reason, got.detail(_where(addr)))
            else:
                out.append(got)
        self.stats["received"] += len(out)
        return out

    def next_deadline_ms(self) -> float | None:
        """Always None: nothing is held back here."""
        return None

    def close(self) -> None:
        self._sock.close()

    # --- checks on arrival -------------------------------------------------------

    def _open(self, data: memoryview, addr: Any) -> tuple[str, bytes] | _Bad:
        """(sender id, payload) of a datagram that passes every check, or the
        first check it fails."""
        n = len(data)
        if n > self.max_datagram:
            return _Bad("bad_datagram",
                        lambda w: f"{n} bytes from {w}, over the limit of {self.max_datagram}")
        if n < _MIN_DATAGRAM_BYTES or data[0] != _MAGIC:
            return _Bad("bad_datagram", lambda w: f"{n} bytes from {w}, not a peer datagram")
        version = data[1]
        if version != _VERSION:
            return _Bad("bad_datagram", lambda w: f"version {version} datagram from {w}")
        src_end = 7 + data[6]
        body_end = n - _MAC_BYTES
        hdr_end = src_end + 1 + data[src_end] if src_end < body_end else body_end + 1
        if data[6] == 0 or hdr_end == src_end + 1 or hdr_end > body_end:
            return _Bad("bad_datagram", lambda w: f"truncated datagram from {w}")
        if data[2 : 2 + _KEY_ID_BYTES] != self._key_id:
            return _Bad("bad_mac",
                        lambda w: f"datagram from {w} made with another key (another cluster?)")
        h = self._mac.copy()
        h.update(data[:body_end])
        if not hmac.compare_digest(h.digest()[:_MAC_BYTES], data[body_end:]):
            return _Bad("bad_mac",
                        lambda w: f"datagram from {w} fails the MAC (forged or damaged)")
        # Authenticated from here on: a holder of the cluster's key set the ids.
        src = bytes(data[7:src_end])
        if data[src_end + 1 : hdr_end] != self._own:
            dst = bytes(data[src_end + 1 : hdr_end]).decode(errors="replace")
            return _Bad("bad_dst", lambda w: f"datagram for {dst!r} from {w}")
        peer = self._peer_of.get(src)
        if peer is None:
            return _Bad("bad_peer", lambda w: f"datagram from {w} claims sender "
                        f"{src.decode(errors='replace')!r}, not a peer",
                        src.decode(errors="replace"))
        if (addr[0], addr[1]) != peer.source:
            return _Bad("bad_source", lambda w: f"datagram of {peer.node_id} from {w}, "
                        f"not from its address {_where(peer.source)}")
        return peer.node_id, bytes(data[hdr_end:body_end])

    def _may_report(self, key: str) -> bool:
        now = self._clock()
        last = self._reported.get(key)
        if last is not None and now - last < self._report_interval_s:
            return False
        self._reported[key] = now
        return True

