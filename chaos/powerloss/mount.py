"""Power-loss mounts driven from another process, and `power_cut`, the fault
the chaos runner calls. The filesystem runs as a child process (`python -m
chaos.powerloss`) answering a Unix socket; nothing here imports FUSE.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import msgspec
import psutil

from chaos.powerloss.lazyfs import CacheStatus
from chaos.powerloss.server import CONTROL_TIMEOUT_S, ControlReply, ControlRequest

MOUNT_TIMEOUT_S = 10.0
UNMOUNT_TIMEOUT_S = 10.0
# sun_path holds at most this many bytes on Linux.
_SOCKET_PATH_MAX_BYTES = 107
_POLL_S = 0.02


class PowerLossError(Exception):
    """A power-loss mount cannot be made, reached or removed; the message says
    why and what to do."""


def unavailable() -> str | None:
    """Why power-loss mounts cannot be made here, or None if they can."""
    if not sys.platform.startswith("linux"):
        return "power-loss mounts need Linux (FUSE)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: load the fuse kernel module (modprobe fuse)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse cannot be opened by this user: run as root or join its group"
    if importlib.util.find_spec("mfusepy") is None:
        return "mfusepy is not installed: pip install -e '.[test]'"
    if ctypes.util.find_library("fuse3") is None and ctypes.util.find_library("fuse") is None:
        return "libfuse is not installed: apt-get install fuse3"
    if os.geteuid() != 0 and _fusermount() is None:
        return "fusermount3 is missing (it mounts for users other than root): apt-get install fuse3"
    return None


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def is_mounted(path: Path) -> bool:
    """Whether something is mounted on `path` (also a mount whose server died)."""
    # Resolving the path itself would fail on a dead FUSE mount (ENOTCONN).
    target = os.path.join(os.path.realpath(path.parent), path.name)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            field = line.split(" ", 5)[4]
            if _unescape(field) == target:
                return True
    return False


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(esc, ch)
    return field


class PowerLossMount:
    """A power-loss filesystem on `mountpoint` over `backing` (which holds what
    is durable), controlled through the socket `control`; its server logs to
    `log`. `mount()` starts it, `cut()` cuts its power, `unmount()` always
    ends it; the object may be rebuilt in another process to cut or unmount."""

    def __init__(self, backing: Path, mountpoint: Path, control: Path, log: Path) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        self.control = control
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def in_node_dir(cls, ndir: Path) -> PowerLossMount:
        """The layout for one node: its data directory `data/` is the mount and
        `disk/` beside it holds what survives a power cut."""
        return cls(ndir / "disk", ndir / "data", ndir / "power.sock", ndir / "power.log")

    @property
    def pid(self) -> int | None:
        """The server's pid, if this object started it and it still runs."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    # --- mounting ---------------------------------------------------------------

    def mount(self, timeout_s: float = MOUNT_TIMEOUT_S) -> None:
        """Start the server and wait until the mount answers."""
        why = unavailable()
        if why is not None:
            raise PowerLossError(why)
        if is_mounted(self.mountpoint):
            raise PowerLossError(f"{self.mountpoint} is already a mount point; unmount it first")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if any(self.mountpoint.iterdir()):
            raise PowerLossError(f"{self.mountpoint} is not empty and the mount would hide its "
                                 f"files; move them into {self.backing} first")
        if len(os.fsencode(self.control)) > _SOCKET_PATH_MAX_BYTES:
            raise PowerLossError(f"{self.control} is longer than a Unix socket path may be "
                                 f"({_SOCKET_PATH_MAX_BYTES} bytes); use a shorter directory")
        self.backing.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.control.unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "chaos.powerloss", str(self.backing), str(self.mountpoint),
                 "--control", str(self.control)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise PowerLossError(f"the power-loss filesystem on {self.mountpoint} exited "
                                     f"at start: {self._log_tail()}")
            if self.control.exists() and is_mounted(self.mountpoint):
                try:
                    self.status()
                    return
                except PowerLossError:
                    pass  # bound but not yet listening: try again
            if time.monotonic() >= deadline:
                self.unmount()
                raise PowerLossError(f"the power-loss filesystem on {self.mountpoint} did not "
                                     f"answer within {timeout_s:.1f}s: {self._log_tail()}")
            time.sleep(_POLL_S)  # polling cadence; the condition is the mount answering

    def unmount(self, timeout_s: float = UNMOUNT_TIMEOUT_S) -> None:
        """End the server by its pid (SIGTERM: a clean unmount, which writes back
        everything; SIGKILL if it hangs) and remove whatever mount is left.
        Safe to call at any time, also twice or after a failure."""
        pid = self.pid
        if pid is None and self._proc is None and self.control.exists():
            pid = self._served_by()
        if pid is not None:
            _end(pid, timeout_s)
        if self._proc is not None:
            self._proc.wait(timeout_s)
            self._proc = None
        if is_mounted(self.mountpoint):
            # The server died without unmounting: a dead mount stays behind.
            fm = _fusermount()
            cmd = [fm, "-u", "-z", str(self.mountpoint)] if fm else \
                ["umount", "-l", str(self.mountpoint)]
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if is_mounted(self.mountpoint):
                raise PowerLossError(f"cannot unmount {self.mountpoint}: "
                                     f"{r.stderr.strip() or r.returncode}; try umount -l on it")
        self.control.unlink(missing_ok=True)

    def _served_by(self) -> int | None:
        """The pid of a server another process started, if it answers."""
        try:
            return self.status().pid or None
        except PowerLossError:
            return None

    def __enter__(self) -> PowerLossMount:
        self.mount()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    # --- control ------------------------------------------------------------------

    def cut(self) -> CacheStatus:
        """Cut the power: every change not fsynced is gone, and the mount shows
        what `backing` holds. Returns what was dropped. Every process writing
        to the mount should be dead first, as a power cut would leave it."""
        return self._call("cut")

    def status(self) -> CacheStatus:
        """What is unsynced now, and the counters of syncs and cuts."""
        return self._call("status")

    def _call(self, op: str) -> CacheStatus:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(CONTROL_TIMEOUT_S)
                s.connect(str(self.control))
                s.sendall(msgspec.json.encode(ControlRequest(op=op)) + b"\n")
                raw = b""
                while chunk := s.recv(65536):
                    raw += chunk
        except OSError as e:
            raise PowerLossError(f"the power-loss filesystem on {self.mountpoint} does not "
                                 f"answer on {self.control} ({e}); is it mounted?") from None
        try:
            reply = msgspec.json.decode(raw, type=ControlReply)
        except msgspec.DecodeError as e:
            raise PowerLossError(f"bad reply from {self.control} ({e})") from None
        if not reply.ok or reply.status is None:
            raise PowerLossError(f"{op} on {self.mountpoint} failed: {reply.error}; "
                                 f"see {self.log}")
        return reply.status

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:]) or f"nothing in {self.log}"


def _end(pid: int, timeout_s: float) -> None:
    """SIGTERM the server by pid, SIGKILL it if it does not go in time."""
    try:
        p = psutil.Process(pid)
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout_s)
        except psutil.TimeoutExpired:
            p.kill()
            p.wait(5)
    except psutil.NoSuchProcess:
        return


class NodeProcesses(Protocol):
    """What a power cut needs of a cluster (raftctl's Cluster fits)."""

    def kill(self, node_id: str) -> int: ...
    def start(self, node_id: str) -> int: ...


def power_cut(cluster: NodeProcesses, mounts: Mapping[str, PowerLossMount],
              nodes: Sequence[str], *, restart: bool = True) -> dict[str, CacheStatus]:
    """Cut the power of `nodes` at one moment: SIGKILL each (they must be
    running), then drop what each one's mount had not synced, then start them
    again unless `restart` is false. Returns what each mount dropped.

    Every node is dead before the first cut, so no write lands between the
    cuts: the outcome is that of one power failure of all of them at once."""
    missing = [n for n in nodes if n not in mounts]
    if missing:
        raise PowerLossError(f"no power-loss mount for {', '.join(missing)}: the cluster must "
                             "be started with its data directories on power-loss mounts")
    for n in nodes:
        cluster.kill(n)
    dropped = {n: mounts[n].cut() for n in nodes}
    if restart:
        for n in nodes:
            cluster.start(n)
    return dropped
