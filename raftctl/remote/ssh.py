"""SSH to a cluster's hosts with asyncssh: one connection per host, reused by
every command of this process and driven from synchronous code through an
event loop on a thread of its own. It knows hosts, commands and files, not
nodes or Raft, and never prints."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import getpass
import os
import shlex
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import msgspec

from raftctl.cluster import ClusterError, ClusterUnavailable

T = TypeVar("T")
K = TypeVar("K")

SSH_CONNECT_TIMEOUT_S = 5.0
# A command gets this long unless its caller says otherwise (installing the
# project with pip takes the longest).
SSH_COMMAND_TIMEOUT_S = 30.0
# After a failed connection the host is not tried again for this long, so a
# status poll of a cluster with one dead host does not wait on it every time.
SSH_RETRY_AFTER_S = 3.0
# What one read of a small remote file (a /proc entry, a log chunk) asks for.
SFTP_READ_BYTES = 1024 * 1024


class SshTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where one SSH connection goes and how it authenticates."""

    address: str
    port: int = 22
    user: str = ""  # empty: the local user's name
    identity_file: str = ""  # empty: the agent and ~/.ssh/id_* (asyncssh's defaults)
    known_hosts: str = ""  # empty: ~/.ssh/known_hosts; host keys are always checked

    def label(self) -> str:
        return f"{self.user or getpass.getuser()}@{self.address}:{self.port}"


class HostUnreachable(ClusterUnavailable):
    """An SSH connection to a host failed or broke; the message names it."""

    def __init__(self, target: SshTarget, reason: str) -> None:
        super().__init__(f"cannot reach {target.label()} over SSH: {reason}")
        self.target = target
        self.reason = reason


class HostCommandFailed(ClusterError):
    """A command on a reachable host exited non-zero; the message has its stderr."""


@dataclass(frozen=True)
class Done:
    """A finished remote command."""

    exit_status: int
    stdout: str
    stderr: str


def sh(script: str) -> str:
    """`script` run by sh whatever the login shell is."""
    return "sh -c " + shlex.quote(script)


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, asyncssh.HostKeyNotVerifiable):
        return (f"the host key is not trusted ({e.reason}); add the host to known_hosts "
                "(ssh-keyscan) or set known_hosts for it in the cluster file")
    if isinstance(e, asyncssh.PermissionDenied):
        return f"permission denied ({e.reason}); check user and identity_file"
    if isinstance(e, asyncssh.Error):
        return e.reason or type(e).__name__
    if isinstance(e, OSError):
        # asyncio's own words ("Connect call failed (addr)") hide the cause.
        return os.strerror(e.errno) if e.errno else (e.strerror or str(e))
    return f"{type(e).__name__}: {e}"


class SshPool:
    """Connections to hosts, made on first use and kept until `close`."""

    def __init__(self, connect_timeout_s: float = SSH_CONNECT_TIMEOUT_S) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._conns: dict[SshTarget, asyncssh.SSHClientConnection] = {}
        self._sftps: dict[SshTarget, asyncssh.SFTPClient] = {}
        self._failed: dict[SshTarget, tuple[float, str]] = {}
        self._locks: dict[SshTarget, asyncio.Lock] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_lock = threading.Lock()

    # --- the loop ------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._thread_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="ssh", daemon=True).start()
                self._loop = loop
                atexit.register(self.close)
            return self._loop

    def sync(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run `coro` on the SSH loop and wait for its result."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())
        return fut.result(timeout_s)

    def each(self, keys: Iterable[K],
             fn: Callable[[K], Awaitable[T]]) -> dict[K, T | ClusterError]:
        """`fn` on every key (a host, a node...) at once; each result, or the
        ClusterError it raised (HostUnreachable for a host that cannot be reached)."""
        todo = list(dict.fromkeys(keys))

        async def one(k: K) -> T | ClusterError:
            try:
                return await fn(k)
            except ClusterError as e:
                return e

        async def every() -> list[T | ClusterError]:
            return list(await asyncio.gather(*(one(k) for k in todo)))

        return dict(zip(todo, self.sync(every()), strict=True))

    def close(self) -> None:
        """Close every connection and stop the loop."""
        with self._thread_lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return

        async def close_all() -> None:
            for conn in self._conns.values():
                conn.close()
            await asyncio.gather(*(c.wait_closed() for c in self._conns.values()),
                                 return_exceptions=True)
            self._conns.clear()
            self._sftps.clear()

        # Closing anyway: what is not closed in time goes with the process.
        with contextlib.suppress(TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(close_all(), loop).result(self.connect_timeout_s)
        loop.call_soon_threadsafe(loop.stop)

    # --- connections -----------------------------------------------------------------

    async def conn(self, t: SshTarget) -> asyncssh.SSHClientConnection:
        """The open connection to `t`, made if needed; raises HostUnreachable."""
        lock = self._locks.setdefault(t, asyncio.Lock())
        async with lock:
            c = self._conns.get(t)
            if c is not None and not c.is_closed():
                return c
            self._conns.pop(t, None)
            self._sftps.pop(t, None)
            failed = self._failed.get(t)
            if failed is not None and time.monotonic() - failed[0] < SSH_RETRY_AFTER_S:
                raise HostUnreachable(t, failed[1])
            opts: dict[str, Any] = {"port": t.port, "connect_timeout": self.connect_timeout_s,
                                    "keepalive_interval": 5, "keepalive_count_max": 3}
            if t.user:
                opts["username"] = t.user
            if t.identity_file:
                opts["client_keys"] = [str(Path(t.identity_file).expanduser())]
            if t.known_hosts:
                opts["known_hosts"] = str(Path(t.known_hosts).expanduser())
            try:
                c = await asyncio.wait_for(asyncssh.connect(t.address, **opts),
                                           self.connect_timeout_s)
            except (TimeoutError, asyncssh.Error, OSError) as e:
                self._failed[t] = (time.monotonic(), _reason(e))
                raise HostUnreachable(t, _reason(e)) from None
            self._failed.pop(t, None)
            self._conns[t] = c
            return c

    async def _sftp(self, t: SshTarget) -> asyncssh.SFTPClient:
        c = await self.conn(t)
        s = self._sftps.get(t)
        if s is None:
            try:
                s = await c.start_sftp_client()
            except (asyncssh.Error, OSError) as e:
                raise HostUnreachable(t, f"no SFTP: {_reason(e)}") from None
            self._sftps[t] = s
        return s

    def _lost(self, t: SshTarget, e: BaseException) -> HostUnreachable:
        """The connection broke under a command: forget it, so the next one
        connects anew."""
        c = self._conns.pop(t, None)
        self._sftps.pop(t, None)
        if c is not None:
            c.close()
        return HostUnreachable(t, _reason(e))

    # --- commands and files -------------------------------------------------------------

    async def run(self, t: SshTarget, command: str, *, stdin: str | None = None,
                  timeout_s: float = SSH_COMMAND_TIMEOUT_S, check: bool = True) -> Done:
        """Run `command` on `t` (by the login shell; wrap it with `sh()`).
        With `check`, a non-zero exit raises HostCommandFailed."""
        c = await self.conn(t)
        try:
            r = await c.run(command, input=stdin, timeout=timeout_s, check=False)
        except asyncssh.TimeoutError:
            raise HostCommandFailed(f"{t.label()}: `{command}` did not finish within "
                                    f"{timeout_s:g}s") from None
        except (asyncssh.Error, OSError) as e:
            raise self._lost(t, e) from None
        out = r.stdout if isinstance(r.stdout, str) else ""
        err = r.stderr if isinstance(r.stderr, str) else ""
        status = r.exit_status if r.exit_status is not None else -1
        if check and status != 0:
            detail = (err.strip() or out.strip() or f"exit status {status}").splitlines()
            raise HostCommandFailed(f"{t.label()}: {detail[-1] if detail else ''}")
        return Done(status, out, err)

    async def read(self, t: SshTarget, path: str, offset: int = 0,
                   size: int = SFTP_READ_BYTES) -> bytes | None:
        """Up to `size` bytes of a remote file from `offset`; None if it does
        not exist. Reads /proc files too (their size says 0)."""
        s = await self._sftp(t)
        try:
            async with s.open(path, "rb") as f:
                await f.seek(offset)
                data = await f.read(size)
        except asyncssh.SFTPNoSuchFile:
            return None
        except asyncssh.SFTPError as e:
            raise HostCommandFailed(f"{t.label()}: cannot read {path}: {e.reason}") from None
        except (asyncssh.Error, OSError) as e:
            raise self._lost(t, e) from None
        return data if isinstance(data, bytes) else data.encode()

    async def size(self, t: SshTarget, path: str) -> int | None:
        """A remote file's size; None if it does not exist."""
        s = await self._sftp(t)
        try:
            return (await s.stat(path)).size
        except asyncssh.SFTPNoSuchFile:
            return None
        except asyncssh.SFTPError as e:
            raise HostCommandFailed(f"{t.label()}: cannot stat {path}: {e.reason}") from None
        except (asyncssh.Error, OSError) as e:
            raise self._lost(t, e) from None

    async def write(self, t: SshTarget, path: str, data: bytes, mode: int = 0o600) -> None:
        """Write a remote file whole: to a temporary name with `mode`, then
        renamed over `path`, so a reader never sees half of it."""
        s = await self._sftp(t)
        tmp = f"{path}.tmp"
        try:
            async with s.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=mode)) as f:
                await f.write(data)
            await s.chmod(tmp, mode)
            await s.posix_rename(tmp, path)
        except asyncssh.SFTPError as e:
            raise HostCommandFailed(f"{t.label()}: cannot write {path}: {e.reason}") from None
        except (asyncssh.Error, OSError) as e:
            raise self._lost(t, e) from None

    async def put(self, t: SshTarget, local: Path, remote: str) -> None:
        """Copy a local file to `remote` (a file path) over SFTP."""
        s = await self._sftp(t)
        try:
            await s.put(str(local), remote)
        except asyncssh.SFTPError as e:
            raise HostCommandFailed(f"{t.label()}: cannot copy {local.name} to {remote}: "
                                    f"{e.reason}") from None
        except (asyncssh.Error, OSError) as e:
            raise self._lost(t, e) from None

    async def home(self, t: SshTarget) -> str:
        """The login's home directory, where relative remote paths start."""
        s = await self._sftp(t)
        try:
            return str(await s.realpath("."))
        except (asyncssh.Error, OSError) as e:
            raise self._lost(t, e) from None
