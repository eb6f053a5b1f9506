"""Multipart sends and receives on a ZeroMQ socket, as pyzmq's
`send_multipart` and `recv_multipart` do them, without their per-call
flag arithmetic: pyzmq's flags are `enum.Flag`s, so each `SNDMORE | flags`
and each `RCVMORE` lookup ran Python's enum machinery, about 5 us of a
leader's CPU per request and answer. Plain ints here."""

from __future__ import annotations

import zmq

NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)


def send_parts(sock: zmq.Socket[bytes], parts: list[bytes], flags: int = NOBLOCK) -> None:
    """Send `parts` as one message (all or none: ZeroMQ delivers a
    multipart message whole); raises as `send_multipart` does."""
    last = len(parts) - 1
    for i in range(last):
        sock.send(parts[i], _SNDMORE | flags)
    sock.send(parts[last], flags)


def recv_parts(sock: zmq.Socket[bytes], flags: int = NOBLOCK) -> list[bytes]:
    """The frames of the next message; raises `zmq.Again` if none waits
    (with NOBLOCK), as `recv_multipart` does."""
    parts = [sock.recv(flags)]
    while sock.get(_RCVMORE):
        parts.append(sock.recv(flags))
    return parts
