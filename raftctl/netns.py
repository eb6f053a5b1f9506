"""Kernel-enforced link faults (`raftctl up --netns`), in one of two modes.

bridge (root): each node in its own network namespace with its own address on
a private bridge; cuts and loss are iptables INPUT rules in the receiving
node's namespace.
sandbox (no root): all nodes in one `unshare --user --map-root-user --net`
namespace, each on its own 127.1.0.x address; cuts and loss are iptables
INPUT rules matching source and destination. A `sleep` process holds the
namespace open; the supervisor and clients reach the nodes through Unix
sockets (NodeSpec.ipc_dir), which cross network namespaces.

Every name derives from the run directory, so `teardown` finds and removes
everything even after raftctl itself crashed. No printing here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Protocol

import msgspec
import psutil

from node.private_files import write_private
from node.transport.links import LinkRule
from raftctl.clusterfile import started_at

CHAIN = "RAFTCTL"
MODES = ("bridge", "sandbox")
SANDBOX_FILE = "sandbox.json"
SANDBOX_START_TIMEOUT_S = 5.0
_CMD_TIMEOUT_S = 20


class NetnsError(Exception):
    """A namespace, link or rule could not be made; the message says which."""


def auto_mode() -> str:
    """The mode `--netns` picks by itself: bridge as root, else sandbox."""
    return "bridge" if os.geteuid() == 0 else "sandbox"


def unavailable(mode: str) -> str | None:
    """Why kernel mode `mode` cannot run here, or None if it can."""
    if mode == "bridge":
        if os.geteuid() != 0:
            return ("--netns=bridge needs root (it creates network namespaces and a bridge); "
                    "--netns=sandbox needs no root")
        tools: tuple[str, ...] = ("ip", "iptables", "iptables-restore")
    elif mode == "sandbox":
        tools = ("ip", "iptables", "iptables-restore", "unshare", "nsenter", "sleep")
    else:
        return f"unknown kernel mode {mode!r} (one of {', '.join(MODES)})"
    for tool in tools:
        if shutil.which(tool) is None:
            return (f"--netns={mode} needs the `{tool}` command "
                    "(Debian: iproute2, iptables, util-linux)")
    if mode == "sandbox":
        return _userns_refused()
    return None


@functools.cache
def _userns_refused() -> str | None:
    p = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"],
                       capture_output=True, text=True, timeout=_CMD_TIMEOUT_S)
    if p.returncode != 0:
        return ("--netns=sandbox needs user namespaces, which this machine refuses "
                f"({p.stderr.strip() or 'unshare failed'}); as root, --netns=bridge works")
    return None


def _run(*cmd: str, check: bool = True, stdin: str | None = None,
         ) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, input=stdin,
                       timeout=_CMD_TIMEOUT_S)
    if check and p.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


def _drop_rules(match: list[str], out: LinkRule, inn: LinkRule) -> list[str]:
    """The iptables rule (restore syntax) for one directed link, if any.
    Traffic a->b is dropped at b's INPUT: an OUTPUT drop would make the
    sender's sendto fail instead of losing the packet."""
    if out.block_out or inn.block_in:
        return [" ".join(["-A", CHAIN, *match, "-j", "DROP"])]
    if out.loss > 0:
        return [" ".join(["-A", CHAIN, *match, "-m", "statistic", "--mode", "random",
                          "--probability", f"{out.loss:.6f}", "-j", "DROP"])]
    return []


def _restore(prefix: list[str], lines: list[str]) -> None:
    """Replace the RAFTCTL chain's rules in one atomic iptables-restore."""
    text = "\n".join(["*filter", f"-F {CHAIN}", *lines, "COMMIT", ""])
    _run(*prefix, "iptables-restore", "--noflush", stdin=text)


def _link_rules(rules: dict[str, dict[str, LinkRule]], src: str, dst: str,
                ) -> tuple[LinkRule, LinkRule]:
    """(src's rule towards dst, dst's rule from src)."""
    return rules.get(src, {}).get(dst, LinkRule()), rules.get(dst, {}).get(src, LinkRule())


class Kernel(Protocol):
    """What the supervisor needs of either mode."""

    addresses: dict[str, str]

    def setup(self) -> None: ...
    def teardown(self) -> list[str]: ...
    def exists(self) -> bool: ...
    def exec_prefix(self, node: str) -> list[str]: ...
    def apply_rules(self, rules: dict[str, dict[str, LinkRule]]) -> None: ...
    def rules(self) -> dict[str, list[str]]: ...


def kernel(mode: str, run_dir: Path, node_ids: list[str]) -> Kernel:
    if mode == "bridge":
        return Bridge(run_dir, node_ids)
    if mode == "sandbox":
        return Sandbox(run_dir, node_ids)
    raise NetnsError(f"unknown kernel mode {mode!r} (one of {', '.join(MODES)})")


class Bridge:
    """A namespace and veth per node on a private bridge. Deterministic names
    (interface names have at most 15 characters) and a /24 inside
    10.200.0.0/13, chosen from the run directory."""

    def __init__(self, run_dir: Path, node_ids: list[str]) -> None:
        if len(node_ids) > 200:
            raise NetnsError("--netns supports at most 200 nodes")
        h = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()
        tag = h[:6]
        net = f"10.{200 + int(h[6:8], 16) % 8}.{int(h[8:10], 16)}"
        self.bridge = f"rc{tag}"
        self.bridge_ip = f"{net}.254"
        self.namespaces = {n: f"rc{tag}-{n}" for n in node_ids}
        self.veths = {n: f"rc{tag}v{i}" for i, n in enumerate(node_ids)}
        self.addresses = {n: f"{net}.{i + 1}" for i, n in enumerate(node_ids)}

    def setup(self) -> None:
        """The bridge, one namespace per node with a veth on the bridge, and
        an empty RAFTCTL chain hooked into each namespace's INPUT."""
        self.teardown()
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for node, ns in self.namespaces.items():
                veth = self.veths[node]
                _run("ip", "netns", "add", ns)
                _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                     "netns", ns)
                _run("ip", "link", "set", veth, "master", self.bridge, "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.addresses[node]}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                _run("ip", "netns", "exec", ns, "iptables", "-N", CHAIN)
                _run("ip", "netns", "exec", ns, "iptables", "-I", "INPUT", "-j", CHAIN)
        except NetnsError:
            self.teardown()
            raise

    def teardown(self) -> list[str]:
        """Remove whatever of this plan exists; returns what was removed."""
        removed = []
        for ns in self.namespaces.values():
            if _run("ip", "netns", "del", ns, check=False).returncode == 0:
                removed.append(ns)
        for veth in self.veths.values():
            _run("ip", "link", "del", veth, check=False)
        if _run("ip", "link", "del", self.bridge, check=False).returncode == 0:
            removed.append(self.bridge)
        return removed

    def exists(self) -> bool:
        out = _run("ip", "netns", "list", check=False).stdout
        names = {line.split()[0] for line in out.splitlines() if line.strip()}
        return bool(names & set(self.namespaces.values()))

    def exec_prefix(self, node: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[node]]

    def apply_rules(self, rules: dict[str, dict[str, LinkRule]]) -> None:
        """`rules[a][b]` is node a's rule for peer b; each namespace's chain
        drops what is cut or lost on its way in."""
        for node in self.namespaces:
            lines = [line for src in self.namespaces if src != node
                     for line in _drop_rules(["-s", self.addresses[src]],
                                             *_link_rules(rules, src, node))]
            _restore(self.exec_prefix(node), lines)

    def rules(self) -> dict[str, list[str]]:
        """The RAFTCTL chain of each namespace, as iptables prints it."""
        return {node: _run("ip", "netns", "exec", ns, "iptables", "-S", CHAIN,
                           check=False).stdout.splitlines()[1:]
                for node, ns in self.namespaces.items()}


class _Holder(msgspec.Struct, frozen=True):
    pid: int
    create_time: float


class Sandbox:
    """All nodes in one user+network namespace, held open by a `sleep`
    process whose pid and start time are in the run directory."""

    def __init__(self, run_dir: Path, node_ids: list[str]) -> None:
        if len(node_ids) > 250:
            raise NetnsError("--netns supports at most 250 nodes")
        self.run_dir = run_dir
        self.addresses = {n: f"127.1.0.{i + 1}" for i, n in enumerate(node_ids)}
        self._file = run_dir / SANDBOX_FILE

    def holder(self) -> psutil.Process | None:
        """The process holding the namespace, if it is alive and ours."""
        try:
            h = msgspec.json.decode(self._file.read_bytes(), type=_Holder)
            p = psutil.Process(h.pid)
            if not started_at(p.create_time(), h.create_time) or \
                    p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except (OSError, msgspec.DecodeError, psutil.Error):
            return None

    def setup(self) -> None:
        """Start the holder, bring up loopback and hook an empty RAFTCTL
        chain into INPUT."""
        self.teardown()
        proc = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--net", "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True)
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + SANDBOX_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                raise NetnsError(f"could not make the sandbox namespace: {err or 'unshare failed'}")
            try:
                # Made, and its user mapping written (nsenter needs both).
                if os.readlink(f"/proc/{proc.pid}/ns/net") != own and \
                        Path(f"/proc/{proc.pid}/uid_map").read_text().strip():
                    break
            except OSError:
                pass
            if time.monotonic() >= deadline:
                proc.kill()
                raise NetnsError("the sandbox namespace was not made within "
                                 f"{SANDBOX_START_TIMEOUT_S:.0f}s (unshare did not finish)")
            time.sleep(0.01)
        if proc.stderr is not None:
            proc.stderr.close()
        holder = _Holder(proc.pid, psutil.Process(proc.pid).create_time())
        write_private(self._file, msgspec.json.encode(holder))
        try:
            prefix = self._prefix(holder.pid)
            _run(*prefix, "ip", "link", "set", "lo", "up")
            _run(*prefix, "iptables", "-N", CHAIN)
            _run(*prefix, "iptables", "-I", "INPUT", "-j", CHAIN)
        except NetnsError:
            self.teardown()
            raise

    def teardown(self) -> list[str]:
        """End the holder (by its recorded pid); the namespace, its addresses
        and its rules go with the last process in it."""
        removed = []
        p = self.holder()
        if p is not None:
            p.send_signal(signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                p.wait(SANDBOX_START_TIMEOUT_S)
            removed.append(f"sandbox namespace (holder pid {p.pid})")
        self._file.unlink(missing_ok=True)
        return removed

    def exists(self) -> bool:
        return self.holder() is not None

    @staticmethod
    def _prefix(pid: int) -> list[str]:
        # --preserve-credentials: an unprivileged user may not call setgroups
        # in the namespace, and its own uid already maps to root in there.
        return ["nsenter", "--preserve-credentials", f"--target={pid}", "--user", "--net",
                "--"]

    def exec_prefix(self, node: str) -> list[str]:
        p = self.holder()
        if p is None:
            raise NetnsError(f"the sandbox namespace of {self.run_dir} is gone; "
                             "`raftctl down` then `raftctl up` makes it again")
        return self._prefix(p.pid)

    def apply_rules(self, rules: dict[str, dict[str, LinkRule]]) -> None:
        lines = [line for dst in self.addresses for src in self.addresses if src != dst
                 for line in _drop_rules(["-s", self.addresses[src], "-d", self.addresses[dst]],
                                         *_link_rules(rules, src, dst))]
        _restore(self.exec_prefix(""), lines)

    def rules(self) -> dict[str, list[str]]:
        """The chain's rules, grouped by the node whose traffic they drop on
        its way in."""
        p = self.holder()
        lines = [] if p is None else _run(*self._prefix(p.pid), "iptables", "-S", CHAIN,
                                         check=False).stdout.splitlines()[1:]
        return {node: [line for line in lines if f"-d {addr}/32" in line]
                for node, addr in self.addresses.items()}


def transport_part(rule: LinkRule) -> LinkRule:
    """What stays in the node's transport in kernel mode: delay, jitter,
    duplication and reordering (this kernel has no netem)."""
    return msgspec.structs.replace(rule, block_out=False, block_in=False, loss=0.0)
