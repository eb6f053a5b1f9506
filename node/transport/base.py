"""`PeerTransport`: what the runner's event loop needs from a peer transport.

Only the protocol lives here; no sockets are opened and nothing blocks.
"""

from __future__ import annotations

from typing import Any, Protocol


class PeerTransport(Protocol):
    """Moves opaque payloads between this node and its peers, never blocking.

    The runner registers `poll_sockets()` for POLLIN in its `zmq.Poller`,
    wakes no later than `next_deadline_ms()`, then calls `receive()`; it
    hands every outgoing message to `send()`. Payloads are bytes the transport
    does not interpret: decoding and size checks of content are the codec's.

    `stats` counts what happened, by name. Keys every transport keeps:
    `sent`, `received`, `dropped_send` (send returned False), `bad_peer`
    (a frame from an identity that is not a peer). A transport may add more.

    The peers change while the node runs (membership changes): `set_peer`
    and `remove_peer`. A transport made with `on_unknown` calls it with the
    id of an authenticated sender that is not a peer.
    """

    stats: dict[str, int]

    def poll_sockets(self) -> list[Any]:
        """The zmq sockets (or file descriptors) to poll for POLLIN."""
        ...

    def peers(self) -> dict[str, Any]:
        """Each peer and its address, in the transport's own form."""
        ...

    def set_peer(self, peer: str, addr: Any) -> None:
        """Reach `peer` at `addr` (the transport's form) from now on and take
        what it sends; a known peer at another address is moved there."""
        ...

    def remove_peer(self, peer: str) -> None:
        """Forget `peer`: nothing more is sent to it, and what it sends is
        dropped as a stranger's (a member that left the configuration)."""
        ...

    def send(self, dst: str, data: bytes) -> bool:
        """Queue `data` for peer `dst` without blocking.

        False, counted in `stats["dropped_send"]`, when the peer is unknown,
        not connected, its queue is full or `data` is too big; the message
        is then lost, as Raft allows (§5.3: RPCs are retried).
        """
        ...

    def receive(self) -> list[tuple[str, bytes]]:
        """Everything ready now, as (sender node id, payload); never blocks."""
        ...

    def next_deadline_ms(self) -> float | None:
        """The earliest time (`time.monotonic()` in ms) at which held-back
        traffic is due and `receive()` should be called, or None."""
        ...

    def close(self) -> None:
        """Close every socket at once; queued messages are discarded."""
        ...
