"""The cluster's CURVE keys, their file, the socket settings that use them, and
a ZAP handler answered from the node's own loop. No threads here; nothing
blocks except reading or writing the small keys file.
"""

from __future__ import annotations

import json
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85

from node.config import ZAP_BATCH_REQUESTS, ZAP_DOMAIN, ZAP_REJECTS_REMEMBERED
from node.private_files import NotPrivate, check_owner, write_private

# libzmq asks this inproc endpoint of the socket's own context (RFC 27).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_KEYS_FILE_MAX_BYTES = 4096
_Z85_KEY_LEN = 40
_RAW_KEY_LEN = 32


class KeysError(Exception):
    """A keys file is missing, unsafe or malformed; the message says which."""


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """The cluster's CURVE keypair, both halves Z85-encoded (40 bytes), as
    `zmq.curve_keypair()` makes them. Every node, client and operator of a
    cluster holds the same pair; the secret never appears in a repr."""

    public: bytes
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for name, key in (("public", self.public), ("secret", self.secret)):
            if _decode_z85_key(key) is None:
                raise KeysError(f"the {name} key is not a Z85-encoded CURVE key of 40 characters")
        if zmq.curve_public(self.secret) != self.public:
            raise KeysError("the public key does not belong to the secret key")



def generate_keys() -> CurveKeys:
    """A new random cluster keypair."""
    public, secret = zmq.curve_keypair()
    return CurveKeys(public, secret)


def _decode_z85_key(key: bytes) -> bytes | None:
    if not isinstance(key, bytes) or len(key) != _Z85_KEY_LEN:
        return None
    try:
        raw = z85.decode(key)
    except (KeyError, ValueError):  # z85.decode signals a bad character by KeyError
        return None
    return raw if len(raw) == _RAW_KEY_LEN else None


def raw_public_key(key: bytes) -> bytes:
    """A public key as the 32 bytes ZAP reports, given Z85 or raw bytes."""
    if len(key) == _RAW_KEY_LEN:
        return key
    raw = _decode_z85_key(key)
    if raw is None:
        raise KeysError("a public key must be 32 raw bytes or 40 Z85 characters")
    return raw


def write_keys(path: Path, keys: CurveKeys) -> None:
    """Write `keys` to `path` as JSON with mode 0600, atomically and durably
    (node/private_files.py: a temporary file created exclusively, so a link
    planted in the directory cannot carry the secret elsewhere)."""
    body = json.dumps({"public": keys.public.decode(), "secret": keys.secret.decode()})
    write_private(path, body.encode() + b"\n", sync=True)


def read_keys(path: Path) -> CurveKeys:
    """Read a keys file written by `write_keys`.

    Raises `KeysError` if the file is missing, not a regular file, owned by
    another user (not root), readable or writable by group or others, or
    does not hold a matching keypair.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeysError(f"no keys file at {path}") from None
    except OSError as e:
        raise KeysError(f"cannot open keys file {path}: {e.strerror}") from None
    try:
        # fstat of the open file, not stat of the name: no window to swap it.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeysError(f"keys file {path} is not a regular file")
        try:
            check_owner(st, path)
        except NotPrivate as e:
            raise KeysError(f"keys file {e}: refusing to trust it") from None
        if st.st_mode & 0o077:
            raise KeysError(
                f"keys file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); make it 0600 (chmod 600)"
            )
        raw = os.read(fd, _KEYS_FILE_MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > _KEYS_FILE_MAX_BYTES:
        raise KeysError(f"keys file {path} is larger than {_KEYS_FILE_MAX_BYTES} bytes")
    try:
        doc = json.loads(raw)
        public, secret = doc["public"], doc["secret"]
        if not isinstance(public, str) or not isinstance(secret, str):
            raise TypeError("keys must be strings")
        return CurveKeys(public.encode("ascii"), secret.encode("ascii"))
    except KeysError as e:
        raise KeysError(f"keys file {path}: {e}") from None
    except (ValueError, KeyError, TypeError, UnicodeError) as e:
        raise KeysError(f"keys file {path} is not a JSON object with public and secret keys "
                        f"({type(e).__name__})") from None


def set_curve_server(sock: zmq.Socket[Any], keys: CurveKeys) -> None:
    """Make `sock` a CURVE server that admits only clients the ZAP handler
    approves; call before bind.

    The ZAP domain must be set: with ZAP_ENFORCE_DOMAIN but no domain, libzmq
    4.3 skips ZAP altogether and admits any client key. With both set, a
    socket whose context has no ZAP handler refuses every client instead of
    admitting all of them."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def set_curve_client(sock: zmq.Socket[Any], keys: CurveKeys) -> None:
    """Make `sock` a CURVE client with the cluster keypair that expects the
    cluster's public key from the server; call before connect."""
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.public)


class ZapHandler:
    """Answers libzmq's ZAP requests (RFC 27, version 1.0) from the node's
    loop: 200 for a CURVE client whose public key is allowed, 400 for anything
    else.

    Register `.socket` for POLLIN and call `.handle()` when it is readable.
    Until `.handle()` runs, CURVE handshakes on this context wait (up to the
    handshake timeout), so a loop that never calls it admits nobody.
    `on_reject(address, raw_public_key)` is called once per distinct
    (address, key) that is rejected (the key is b"" for a non-CURVE client),
    for an `auth_rejected` log event. Only one handler may exist per context.
    """

    def __init__(
        self,
        ctx: zmq.Context[Any],
        allowed_public_keys: set[bytes],
        on_reject: Callable[[str, bytes], None],
    ) -> None:
        self._allowed = frozenset(raw_public_key(k) for k in allowed_public_keys)
        self._on_reject = on_reject
        self._reported: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self.stats: dict[str, int] = {"accepted": 0, "rejected": 0, "malformed": 0}
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        try:
            self.socket.bind(ZAP_ENDPOINT)
        except zmq.ZMQError:
            self.socket.close()
            raise

    def handle(self) -> int:
        """Answer every pending request (at most a batch); returns how many.

        A REP socket's reply never blocks: libzmq drops it if the pipe is
        full, and the handshake then times out."""
        answered = 0
        while answered < ZAP_BATCH_REQUESTS:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            reply, rejected = self._answer(frames)
            # Reply before reporting: a REP socket that received must send
            # next, or every later handshake of the context would stall.
            self.socket.send_multipart(reply)
            answered += 1
            if rejected is not None:
                self._report(*rejected)
        return answered

    def close(self) -> None:
        self.socket.close(linger=0)

    def _answer(self, frames: list[bytes]) -> tuple[list[bytes], tuple[str, bytes] | None]:
        """The reply to one request, and (address, key) if it is a rejection."""
        request_id = frames[1] if len(frames) > 1 else b""
        if len(frames) < 6 or frames[0] != b"1.0":
            self.stats["malformed"] += 1
            return [b"1.0", request_id, b"500", b"malformed ZAP request", b"", b""], None
        address = frames[3].decode("utf-8", "replace")
        mechanism, credentials = frames[5], frames[6:]
        key = credentials[0] if mechanism == b"CURVE" and len(credentials) == 1 else b""
        if key and key in self._allowed:
            self.stats["accepted"] += 1
            return [b"1.0", request_id, b"200", b"OK", z85.encode(key), b""], None
        self.stats["rejected"] += 1
        return [b"1.0", request_id, b"400", b"key not allowed", b"", b""], (address, key)

    def _report(self, address: str, key: bytes) -> None:
        seen = (address, key)
        if seen in self._reported:
            self._reported.move_to_end(seen)
            return
        self._reported[seen] = None
        if len(self._reported) > ZAP_REJECTS_REMEMBERED:
            self._reported.popitem(last=False)
        self._on_reject(address, key)
