"""Hosts for the multi-host tests: one network namespace per host on a bridge
that the lab makes, each running its own sshd (own config, host key,
authorized_keys and port, all under the lab's directory), with its own
install path and run directory. Needs root, iproute2 and openssh-server.

`Lab.close` kills by pid everything left in each namespace, then deletes
the namespaces and the bridge, whatever happened before. Run by hand for a
benchmark: `python -m tests.sshlab DIR` builds a lab, writes DIR/cluster.toml
and waits for Ctrl-C, then removes everything.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import psutil

SSHD = "/usr/sbin/sshd"
SSH_PORT = 2222  # inside each namespace; not 22, so the inventory's port is used
# A /24 inside 10.213.0.0/16 is chosen from the lab's directory: raftctl's own
# --netns bridges use 10.200.0.0/13, so no test of theirs shares it.
_NET_PREFIX = "10.213"
_CMD_TIMEOUT_S = 20
SSHD_START_TIMEOUT_S = 10.0


@functools.cache
def missing() -> str | None:
    """Why the lab cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "the multi-host tests need root (network namespaces, a bridge, sshd)"
    for tool in ("ip", "iptables", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"the multi-host tests need `{tool}` (Debian: iproute2, iptables)"
    if not Path(SSHD).exists():
        return f"the multi-host tests need {SSHD} (Debian: openssh-server)"
    # A host's virtualenv sees the site-packages of the Python it is made
    # from, and one made from a virtualenv's Python sees its base's.
    base = getattr(sys, "_base_executable", sys.executable)
    deps = "import asyncssh, click, msgspec, psutil, rich, structlog, zmq"
    if subprocess.run([base, "-c", deps], capture_output=True).returncode != 0:
        return (f"the hosts install raftctl into a virtualenv made from {base}, which lacks "
                "the dependencies (a virtualenv's own packages are not seen there); run these "
                "tests with a Python that has them installed, as .ci/run does")
    return None


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=_CMD_TIMEOUT_S)
    if check and p.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {p.stderr.strip()}")
    return p


@dataclass
class Host:
    """One pretend machine: a namespace, its address, its sshd."""

    name: str
    namespace: str
    veth: str
    address: str
    root: Path  # this host's own files: sshd config and key, install, run directory
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def install_path(self) -> Path:
        return self.root / "install"

    @property
    def run_path(self) -> Path:
        return self.root / "run"

    def pids(self) -> list[int]:
        """Every process whose network is this namespace."""
        out = _run("ip", "netns", "pids", self.namespace, check=False).stdout
        return [int(x) for x in out.split()]


@dataclass
class Lab:
    """Hosts on a private bridge, an SSH user key they all accept, and a
    known_hosts file with their host keys."""

    root: Path
    hosts: list[Host] = field(default_factory=list)
    bridge: str = ""
    bridge_ip: str = ""

    @property
    def identity_file(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def inventory(self, transport: str = "zmq", base_port: int = 27100,
                  **settings: object) -> str:
        """A cluster file: node nI on host hI, every SSH setting given."""
        lines = [f'transport = "{transport}"']
        lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"'
                  for k, v in settings.items()]
        for i in range(len(self.hosts)):
            lines += ["", "[[nodes]]", f'id = "n{i + 1}"', f"peer_port = {base_port + i}",
                      f"client_port = {base_port + 100 + i}",
                      f"control_port = {base_port + 200 + i}"]
        for i, h in enumerate(self.hosts):
            lines += ["", f"[hosts.n{i + 1}]", f'address = "{h.address}"', 'user = "root"',
                      f"port = {SSH_PORT}", f'identity_file = "{self.identity_file}"',
                      f'known_hosts = "{self.known_hosts}"', f'python = "{sys.executable}"',
                      f'install_path = "{h.install_path}"', f'run_path = "{h.run_path}"']
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        """Kill by pid whatever runs in the namespaces, then remove them and
        the bridge."""
        for h in self.hosts:
            procs = []
            for pid in h.pids():
                try:
                    p = psutil.Process(pid)
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                    procs.append(p)
                except psutil.Error:
                    continue
            psutil.wait_procs(procs, timeout=5)
            if h.sshd is not None:
                h.sshd.wait(5)
        for h in self.hosts:
            _run("ip", "netns", "del", h.namespace, check=False)
            _run("ip", "link", "del", h.veth, check=False)
        if self.bridge:
            _run("ip", "link", "del", self.bridge, check=False)

    def left_running(self) -> dict[str, list[int]]:
        """Processes in each namespace other than its sshd."""
        out: dict[str, list[int]] = {}
        for h in self.hosts:
            sshd = h.sshd.pid if h.sshd is not None else -1
            pids = [p for p in h.pids() if p != sshd and not _is_sshd_of(p, sshd)]
            if pids:
                out[h.name] = pids
        return out


def _is_sshd_of(pid: int, sshd: int) -> bool:
    """A per-connection sshd process of the listener `sshd`."""
    try:
        p = psutil.Process(pid)
        return p.ppid() == sshd or any(a.pid == sshd for a in p.parents())
    except psutil.Error:
        return False


def _net(root: Path) -> str:
    h = hashlib.sha256(str(root.resolve()).encode()).digest()
    used = _run("ip", "-4", "-o", "addr", check=False).stdout
    for i in range(256):
        net = f"{_NET_PREFIX}.{(h[0] + i) % 256}"
        if f" {net}." not in used:
            return net
    raise RuntimeError(f"every /24 of {_NET_PREFIX}.0.0/16 is in use on this machine")


def _keypair(path: Path) -> asyncssh.SSHKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    path.chmod(0o600)
    key.write_public_key(str(path) + ".pub")
    return key


_SSHD_CONFIG = """\
Port {port}
ListenAddress {address}
HostKey {host_key}
PidFile {root}/sshd.pid
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxSessions 64
MaxStartups 64
Subsystem sftp internal-sftp
LogLevel ERROR
"""


def make_lab(root: Path, n: int = 3) -> Lab:
    """Build `n` hosts under `root` and wait until every sshd accepts
    connections. On any failure everything made so far is removed."""
    root.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:5]
    net = _net(root)
    lab = Lab(root, bridge=f"rs{tag}", bridge_ip=f"{net}.254")
    try:
        user_key = _keypair(lab.identity_file)
        authorized = root / "authorized_keys"
        authorized.write_text(user_key.export_public_key().decode())
        # sshd refuses to start without its privilege separation directory,
        # which the package's service would make at boot.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        _run("ip", "link", "add", lab.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{lab.bridge_ip}/24", "dev", lab.bridge)
        _run("ip", "link", "set", lab.bridge, "up")
        known: list[str] = []
        for i in range(n):
            h = Host(f"h{i + 1}", f"rs{tag}-h{i + 1}", f"rs{tag}v{i}", f"{net}.{i + 1}",
                     root / f"h{i + 1}")
            lab.hosts.append(h)
            h.root.mkdir(exist_ok=True)
            _run("ip", "netns", "add", h.namespace)
            _run("ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0",
                 "netns", h.namespace)
            _run("ip", "link", "set", h.veth, "master", lab.bridge, "up")
            _run("ip", "-n", h.namespace, "addr", "add", f"{h.address}/24", "dev", "eth0")
            _run("ip", "-n", h.namespace, "link", "set", "eth0", "up")
            _run("ip", "-n", h.namespace, "link", "set", "lo", "up")
            host_key = _keypair(h.root / "ssh_host_ed25519_key")
            known.append(f"[{h.address}]:{SSH_PORT} "
                         + host_key.export_public_key().decode().strip())
            conf = h.root / "sshd_config"
            conf.write_text(_SSHD_CONFIG.format(
                port=SSH_PORT, address=h.address, host_key=h.root / "ssh_host_ed25519_key",
                root=h.root, authorized_keys=authorized))
            h.sshd = subprocess.Popen(
                ["ip", "netns", "exec", h.namespace, SSHD, "-D", "-e", "-f", str(conf)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(h.root / "sshd.log", "wb"))  # noqa: SIM115 - the child keeps it
        lab.known_hosts.write_text("\n".join(known) + "\n")
        for h in lab.hosts:
            _wait_listening(h)
    except BaseException:
        lab.close()
        raise
    return lab


def _wait_listening(h: Host) -> None:
    deadline = time.monotonic() + SSHD_START_TIMEOUT_S
    while True:
        if h.sshd is not None and h.sshd.poll() is not None:
            raise RuntimeError(f"sshd of {h.name} exited: "
                               f"{(h.root / 'sshd.log').read_text().strip()}")
        try:
            with socket.create_connection((h.address, SSH_PORT), timeout=0.5):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"sshd of {h.name} is not listening on "
                                   f"{h.address}:{SSH_PORT} after {SSHD_START_TIMEOUT_S}s"
                                   ) from e
            time.sleep(0.05)  # polling cadence; the condition is the listening port


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.sshlab DIR")
    root = Path(sys.argv[1]).resolve()
    why = missing()
    if why is not None:
        sys.exit(why)
    lab = make_lab(root)
    try:
        (root / "cluster.toml").write_text(lab.inventory())
        print(f"{len(lab.hosts)} hosts up: " + ", ".join(h.address for h in lab.hosts))
        print(f"inventory: {root / 'cluster.toml'}; Ctrl-C removes the lab")
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)
    finally:
        lab.close()


if __name__ == "__main__":
    main()
