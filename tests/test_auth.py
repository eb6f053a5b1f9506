"""CURVE keys, their file and the ZAP handler: only the cluster's key gets a
message through, rejections are reported once, the keys file stays private."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from node.transport.auth import (
    ZAP_ENDPOINT,
    CurveKeys,
    KeysError,
    ZapHandler,
    generate_keys,
    read_keys,
    write_keys,
)
from node.transport.zmq import ZmqTransport, set_common_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Receiver:
    """Node n1 (peer n2 known by name only) with a ZAP handler, driven by a
    poll loop as the runner drives it."""

    def __init__(self, keys: CurveKeys, with_zap: bool = True) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.keys = keys
        self.rejected: list[tuple[str, bytes]] = []
        self.zap = (
            ZapHandler(self.ctx, {keys.public}, lambda a, k: self.rejected.append((a, k)))
            if with_zap else None
        )
        self.addr = f"tcp://127.0.0.1:{free_port()}"
        self.node = ZmqTransport(
            self.ctx, "n1", self.addr, {"n2": f"tcp://127.0.0.1:{free_port()}"}, keys)
        self.inbox: list[tuple[str, bytes]] = []
        self.socks: list[zmq.Socket[bytes]] = []
        self.monitors: list[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]] = []

    def dealer(
        self, keys: CurveKeys | None, server_key: bytes | None = None
    ) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
        """A DEALER claiming to be n2, with `keys` (None: no CURVE), and a
        monitor of its events attached before it connects."""
        s: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        set_common_options(s)
        s.setsockopt(zmq.ROUTING_ID, b"n2")
        if keys is not None:
            s.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
            s.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
            s.setsockopt(zmq.CURVE_SERVERKEY, server_key or self.keys.public)
        monitor = s.get_monitor_socket()
        s.connect(self.addr)
        self.socks.append(s)
        self.monitors.append((s, monitor))
        return s, monitor

    def drive_until(
        self, cond: Callable[[], bool], what: str, each: Callable[[], object] | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
            if each is not None:
                each()
            poller = zmq.Poller()
            poller.register(self.node.poll_sockets()[0], zmq.POLLIN)
            if self.zap is not None:
                poller.register(self.zap.socket, zmq.POLLIN)
            poller.poll(5)
            if self.zap is not None:
                self.zap.handle()
            self.inbox.extend(self.node.receive())

    def close(self) -> None:
        for s, monitor in self.monitors:
            s.disable_monitor()
            monitor.close(linger=0)
        for s in self.socks:
            s.close(linger=0)
        self.node.close()
        if self.zap is not None:
            self.zap.close()
        self.ctx.term()


@pytest.fixture
def keys() -> CurveKeys:
    return generate_keys()


@pytest.fixture
def rx(keys: CurveKeys) -> Iterator[Receiver]:
    r = Receiver(keys)
    yield r
    r.close()


def sender(sock: zmq.Socket[bytes], prefix: bytes) -> Callable[[], None]:
    n = iter(range(1_000_000))

    def send() -> None:
        with contextlib.suppress(zmq.Again):
            sock.send(prefix + b"%d" % next(n), zmq.NOBLOCK)

    return send


def wait_for_event(sock: zmq.Socket[bytes], events: set[int], what: str) -> int:
    """The first of `events` on `sock`'s monitor within 5 s."""
    deadline = time.monotonic() + 5
    while True:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0 or not sock.poll(left_ms):
            pytest.fail(f"timed out waiting for {what}")
        event: int = recv_monitor_message(sock)["event"]
        if event in events:
            return event


def test_the_cluster_key_is_admitted(rx: Receiver, keys: CurveKeys) -> None:
    """A DEALER with the cluster keypair gets its messages through, approved by ZAP."""
    good, _ = rx.dealer(keys)
    rx.drive_until(lambda: bool(rx.inbox), "a message with the right key", each=sender(good, b"ok"))
    assert rx.inbox[0][0] == "n2"
    assert rx.zap is not None and rx.zap.stats["accepted"] >= 1
    assert rx.rejected == []


def test_another_keypair_is_rejected_and_gets_nothing_delivered(
    rx: Receiver, keys: CurveKeys
) -> None:
    """A DEALER with its own keypair (and the right server key) is refused by ZAP."""
    other = generate_keys()
    bad, monitor = rx.dealer(other)
    rx.drive_until(lambda: bool(rx.rejected), "the ZAP rejection", each=sender(bad, b"bad"))
    wait_for_event(monitor, {zmq.EVENT_HANDSHAKE_FAILED_AUTH}, "the client to see the refusal")
    good, _ = rx.dealer(keys)
    rx.drive_until(lambda: bool(rx.inbox), "the right key's message", each=sender(good, b"good"))
    assert all(d.startswith(b"good") for _, d in rx.inbox)
    assert rx.rejected == [("127.0.0.1", z85.decode(other.public))]


def test_a_rejected_key_is_reported_once_per_address(rx: Receiver) -> None:
    """Repeated attempts with one wrong key call on_reject once; a second key once more."""
    other, third = generate_keys(), generate_keys()
    for k in (other, other, other, third):
        rx.dealer(k)[0].send(b"x")
    assert rx.zap is not None
    rx.drive_until(lambda: rx.zap is not None and rx.zap.stats["rejected"] >= 4,
                   "four ZAP rejections")
    assert sorted(k for _, k in rx.rejected) == sorted(
        [z85.decode(other.public), z85.decode(third.public)])
    assert rx.inbox == []


@pytest.mark.parametrize("kind", ["no CURVE", "wrong server key"])
def test_a_client_that_cannot_complete_curve_gets_nothing(
    rx: Receiver, keys: CurveKeys, kind: str
) -> None:
    """A DEALER without CURVE, or expecting another server key, has its handshake fail."""
    bad, monitor = (rx.dealer(None) if kind == "no CURVE"
                    else rx.dealer(keys, generate_keys().public))
    bad.send(b"bad")
    rx.drive_until(lambda: bool(monitor.poll(0)), "a monitor event")
    wait_for_event(monitor, {zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                             zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_DISCONNECTED},
                   "the handshake to fail")
    good, _ = rx.dealer(keys)
    rx.drive_until(lambda: bool(rx.inbox), "the right key's message", each=sender(good, b"good"))
    assert all(d.startswith(b"good") for _, d in rx.inbox)


def test_without_a_zap_handler_nobody_is_admitted(keys: CurveKeys) -> None:
    """A CURVE server whose context has no ZAP handler refuses even the right key."""
    rx = Receiver(keys, with_zap=False)
    try:
        good, monitor = rx.dealer(keys)
        good.send(b"x")
        wait_for_event(monitor, {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_DISCONNECTED,
                                 zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL}, "the handshake to fail")
        rx.drive_until(lambda: True, "one drain")
        assert rx.inbox == []
    finally:
        rx.close()


def test_zap_answers_malformed_and_non_curve_requests(keys: CurveKeys) -> None:
    """handle() answers 500 to a malformed request and 400 to a non-CURVE mechanism."""
    ctx: zmq.Context[Any] = zmq.Context()
    rejected: list[tuple[str, bytes]] = []
    zap = ZapHandler(ctx, {keys.public}, lambda a, k: rejected.append((a, k)))
    req: zmq.Socket[bytes] = ctx.socket(zmq.REQ)
    req.connect(ZAP_ENDPOINT)

    def ask(frames: list[bytes]) -> list[bytes]:
        req.send_multipart(frames)
        deadline = time.monotonic() + 5
        while not req.poll(5):
            zap.handle()
            if time.monotonic() > deadline:
                pytest.fail("no ZAP reply")
        return req.recv_multipart()

    try:
        assert ask([b"2.0", b"7"])[:3] == [b"1.0", b"7", b"500"]
        assert ask([b"1.0", b"8", b"d", b"10.0.0.9", b"", b"NULL"])[:3] == [b"1.0", b"8", b"400"]
        raw = z85.decode(keys.public)
        reply = ask([b"1.0", b"9", b"d", b"10.0.0.9", b"", b"CURVE", raw])
        assert reply[:3] == [b"1.0", b"9", b"200"]
        assert rejected == [("10.0.0.9", b"")]
        assert zap.stats == {"accepted": 1, "rejected": 1, "malformed": 1}
    finally:
        req.close(linger=0)
        zap.close()
        ctx.term()


def test_only_one_zap_handler_per_context(keys: CurveKeys) -> None:
    """A second handler on the same context fails to bind instead of sharing."""
    ctx: zmq.Context[Any] = zmq.Context()
    zap = ZapHandler(ctx, {keys.public}, lambda a, k: None)
    try:
        with pytest.raises(zmq.ZMQError):
            ZapHandler(ctx, {keys.public}, lambda a, k: None)
    finally:
        zap.close()
        ctx.term()


# --- the keys file ----------------------------------------------------------


def test_keys_file_round_trips_with_mode_0600(tmp_path: Path) -> None:
    """write_keys then read_keys gives back the pair; the file is 0600 whatever the umask."""
    keys = generate_keys()
    path = tmp_path / "keys"
    old = os.umask(0)
    try:
        write_keys(path, keys)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_keys(path) == keys
    write_keys(path, generate_keys())
    assert read_keys(path) != keys


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_keys_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A keys file any group or other user can access is refused with the fix in the message."""
    path = tmp_path / "keys"
    write_keys(path, generate_keys())
    path.chmod(mode)
    with pytest.raises(KeysError, match="chmod 600"):
        read_keys(path)


@pytest.mark.parametrize(
    "body",
    ["not json", "[]", '{"public": "x"}', '{"public": 1, "secret": 2}'],
)
def test_malformed_keys_file_is_refused(tmp_path: Path, body: str) -> None:
    """Anything but a JSON object with two keys is a KeysError."""
    path = tmp_path / "keys"
    path.write_text(body)
    path.chmod(0o600)
    with pytest.raises(KeysError):
        read_keys(path)


def test_keys_file_with_mismatched_halves_is_refused(tmp_path: Path) -> None:
    """A public key that does not belong to the secret key is refused."""
    a, b = generate_keys(), generate_keys()
    path = tmp_path / "keys"
    path.write_text(json.dumps({"public": a.public.decode(), "secret": b.secret.decode()}))
    path.chmod(0o600)
    with pytest.raises(KeysError, match="does not belong"):
        read_keys(path)


def test_missing_keys_file_is_a_keys_error(tmp_path: Path) -> None:
    """A missing keys file is reported as such, not as a traceback."""
    with pytest.raises(KeysError, match="no keys file"):
        read_keys(tmp_path / "absent")


def test_curve_keys_hide_the_secret_and_check_their_format() -> None:
    """repr never shows the secret; a key that is not 40 Z85 characters is refused."""
    keys = generate_keys()
    assert keys.secret.decode() not in repr(keys)
    with pytest.raises(KeysError):
        CurveKeys(b"short", keys.secret)
    with pytest.raises(KeysError):
        CurveKeys(keys.public, b"~" * 40)


def test_a_failing_reject_callback_does_not_stall_zap(keys: CurveKeys) -> None:
    """If on_reject raises, the request was still answered and the next one is too."""
    ctx: zmq.Context[Any] = zmq.Context()

    def explode(address: str, key: bytes) -> None:
        raise RuntimeError("logging failed")

    zap = ZapHandler(ctx, {keys.public}, explode)
    req: zmq.Socket[bytes] = ctx.socket(zmq.REQ)
    req.connect(ZAP_ENDPOINT)
    try:
        req.send_multipart([b"1.0", b"1", b"d", b"10.0.0.9", b"", b"NULL"])
        assert zap.socket.poll(5_000), "the request did not reach the handler"
        with pytest.raises(RuntimeError):
            zap.handle()
        assert req.poll(5_000), "the rejected request got no reply"
        assert req.recv_multipart()[2] == b"400"
        req.send_multipart([b"1.0", b"2", b"d", b"10.0.0.9", b"", b"CURVE",
                            z85.decode(keys.public)])
        deadline = time.monotonic() + 5
        while not req.poll(5):
            zap.handle()
            assert time.monotonic() < deadline, "no reply to the next request"
        assert req.recv_multipart()[2] == b"200"
    finally:
        req.close(linger=0)
        zap.close()
        ctx.term()
