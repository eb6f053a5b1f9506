"""The power-loss filesystem as a process: mounts a `LazyFs` with FUSE and
answers `cut` and `status` on a Unix socket until SIGTERM, which unmounts it
cleanly. The one module that imports mfusepy, and only inside `serve`.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import msgspec

from chaos.powerloss.lazyfs import CacheStatus, LazyFs

# One request per connection: a JSON ControlRequest line in, a ControlReply line out.
CONTROL_OPS = ("cut", "status")
CONTROL_TIMEOUT_S = 5.0
_MAX_REQUEST_BYTES = 4096


class ControlRequest(msgspec.Struct, frozen=True):
    op: str  # one of CONTROL_OPS


class ControlReply(msgspec.Struct, frozen=True):
    ok: bool
    status: CacheStatus | None = None  # for `cut`: what the cut dropped
    error: str = ""


class _Served(LazyFs):
    """A LazyFs that opens its control socket once it is mounted."""

    def __init__(self, backing: Path, control: Path) -> None:
        super().__init__(backing)
        self._control = control
        self.unmounted = False

    def init(self, path: str) -> None:
        """Mounted: the socket appears now, so a client that reaches it knows
        the mount is ready."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._control.unlink(missing_ok=True)
        sock.bind(str(self._control))
        sock.listen()
        threading.Thread(target=self._answer, args=(sock,), name="control", daemon=True).start()

    def destroy(self, path: str) -> None:
        super().destroy(path)
        self.unmounted = True

    def _answer(self, sock: socket.socket) -> None:
        while True:
            conn, _ = sock.accept()
            with conn:
                conn.settimeout(CONTROL_TIMEOUT_S)
                try:
                    reply = self._reply(_read_line(conn))
                    conn.sendall(msgspec.json.encode(reply) + b"\n")
                except OSError:
                    continue  # the client went away; the next one may not

    def _reply(self, line: bytes) -> ControlReply:
        try:
            req = msgspec.json.decode(line, type=ControlRequest)
        except msgspec.DecodeError as e:
            return ControlReply(ok=False, error=f"bad request ({e})")
        try:
            if req.op == "cut":
                return ControlReply(ok=True, status=self.cut())
            if req.op == "status":
                return ControlReply(ok=True, status=self.status())
        except (OSError, ValueError) as e:
            return ControlReply(ok=False, error=f"{req.op} failed: {e}")
        return ControlReply(ok=False,
                            error=f"unknown op {req.op!r}; one of {', '.join(CONTROL_OPS)}")


def _read_line(conn: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < _MAX_REQUEST_BYTES:
        chunk = conn.recv(_MAX_REQUEST_BYTES)
        if not chunk:
            break
        buf += chunk
    return buf


def serve(backing: Path, mountpoint: Path, control: Path) -> None:
    """Mount the filesystem over `backing` on `mountpoint` and serve it until
    SIGTERM or an unmount. Raises RuntimeError if FUSE cannot mount it."""
    import mfusepy  # here only: neither a node nor the supervisor needs FUSE

    fs = _Served(backing.resolve(), control)
    try:
        mfusepy.FUSE(
            fs, str(mountpoint), foreground=True, fsname="powerloss",
            # One request at a time: the cache is one lock anyway.
            nothreads=True,
            # The kernel must keep nothing the cut could take back: no pages
            # (direct_io), no names, sizes or absent names (timeouts of 0).
            direct_io=True, attr_timeout=0, entry_timeout=0, negative_timeout=0,
            # An unlinked open file goes at once, not under a hidden name.
            hard_remove=True,
        )
    except RuntimeError:
        # libfuse reports the SIGTERM that ended it as a failure (8).
        if not fs.unmounted:
            raise
    finally:
        control.unlink(missing_ok=True)
