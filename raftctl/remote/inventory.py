"""The inventory: which node runs on which host and how to reach it over SSH,
read from a cluster file's `[hosts.NODE]` tables (defaults in `[ssh]`) and
kept in the run directory as `hosts.json`. Pure data and checks, no I/O but
reading and writing those files."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path

import msgspec

from node.config import ClusterConfig
from raftctl.cluster import ClusterError, load_config_file
from raftctl.remote import HOSTS_FILE
from raftctl.remote.ssh import SshTarget

# Where the project is installed on a host when the inventory does not say,
# relative to the SSH user's home directory.
DEFAULT_INSTALL_PATH = "raftctl"
MIN_PYTHON = (3, 11)


class HostSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One node's host: its address (which the node binds and its peers and
    the supervisor reach) and how to log in and where to put things there."""

    address: str
    port: int = 22
    user: str = ""  # empty: the local user's name, as ssh does
    identity_file: str = ""  # empty: the SSH agent and ~/.ssh/id_*
    known_hosts: str = ""  # empty: ~/.ssh/known_hosts (host keys are always checked)
    python: str = "python3"  # the host's Python, 3.11 or newer; a virtualenv is made from it
    install_path: str = DEFAULT_INSTALL_PATH  # the virtualenv and the wheels go here
    run_path: str = ""  # the node's run directory; empty: INSTALL_PATH/clusters/NAME

    def target(self) -> SshTarget:
        return SshTarget(address=self.address, port=self.port, user=self.user,
                         identity_file=self.identity_file, known_hosts=self.known_hosts)

    def run_dir(self, cluster: str) -> str:
        return self.run_path or f"{self.install_path.rstrip('/')}/clusters/{cluster}"


_SSH_DEFAULT_FIELDS = frozenset(HostSpec.__struct_fields__) - {"address"}


def load_hosts_config(path: Path, name: str | None = None,
                      ) -> tuple[ClusterConfig, dict[str, HostSpec]]:
    """A cluster file with its inventory: the config, each node at its host's
    address, and the hosts by node (empty if the file names none)."""
    cfg = load_config_file(path, name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:  # read once already: only a race
        raise ClusterError(f"cannot read {path}: {e}") from None
    hosts_raw = raw.get("hosts", {})
    defaults = raw.get("ssh", {})
    if not isinstance(hosts_raw, dict) or not isinstance(defaults, dict):
        raise ClusterError(f"{path}: hosts and ssh must be tables ([hosts.n1], [ssh])")
    unknown = sorted(set(defaults) - _SSH_DEFAULT_FIELDS)
    if unknown:
        raise ClusterError(f"{path}: ssh.{unknown[0]}: not a setting of [ssh] (those are: "
                           f"{', '.join(sorted(_SSH_DEFAULT_FIELDS))}; address goes in "
                           "each [hosts.NODE])")
    hosts: dict[str, HostSpec] = {}
    for node, fields in hosts_raw.items():
        if not isinstance(fields, dict):
            raise ClusterError(f"{path}: hosts.{node} must be a table ([hosts.{node}])")
        try:
            hosts[node] = msgspec.convert({**defaults, **fields}, HostSpec)
        except msgspec.ValidationError as e:
            raise ClusterError(f"{path}: hosts.{node}: {e}") from None
    return place(cfg, hosts, str(path))


def place(cfg: ClusterConfig, hosts: dict[str, HostSpec], where: str,
          ) -> tuple[ClusterConfig, dict[str, HostSpec]]:
    """`cfg` with each node of `hosts` at its host's address, checked."""
    problems = []
    ids = [n.id for n in cfg.nodes]
    for node, h in hosts.items():
        if node not in ids:
            problems.append(f"hosts.{node}: there is no node {node} (nodes: {', '.join(ids)})")
            continue
        problems += [f"hosts.{node}.{p}" for p in host_problems(h)]
    nodes = []
    for n in cfg.nodes:
        spec = hosts.get(n.id)
        if spec is None:
            nodes.append(n)
        elif n.host not in ("127.0.0.1", spec.address):
            problems.append(f"nodes: {n.id} has host {n.host} but hosts.{n.id}.address is "
                            f"{spec.address}; give the address once, in [hosts.{n.id}]")
            nodes.append(n)
        else:
            nodes.append(msgspec.structs.replace(n, host=spec.address))
    if hosts:
        for n in nodes:
            if n.id not in hosts and ipaddress.ip_address(n.host).is_loopback:
                problems.append(
                    f"nodes: {n.id} runs on this machine bound to {n.host}, which the nodes "
                    "on other hosts cannot reach; give it this machine's address (host = ...) "
                    f"or a [hosts.{n.id}] table")
    if problems:
        raise ClusterError(f"{where}: " + "; ".join(problems))
    out = msgspec.structs.replace(cfg, nodes=nodes)
    if more := out.problems():
        raise ClusterError(f"{where}: " + "; ".join(more))
    return out, hosts


def host_problems(h: HostSpec) -> list[str]:
    """What is wrong with one host's settings, as `field: message`."""
    out = []
    try:
        if ipaddress.ip_address(h.address).version != 4:
            out.append(f"address: {h.address} is IPv6; the nodes' transports speak IPv4")
    except ValueError:
        out.append(f"address: {h.address!r} is not an IPv4 address (the node binds it, and "
                   "kernel faults match it, so it must be the address itself, not a name)")
    if not 1 <= h.port <= 65535:
        out.append(f"port: {h.port} is not a port number (1-65535)")
    if not h.python.strip():
        out.append("python: must name the host's Python 3.11+ (python3 by default)")
    if not h.install_path.strip():
        out.append("install_path: must not be empty")
    return out


def save_hosts(run_dir: Path, hosts: dict[str, HostSpec]) -> None:
    path = run_dir / HOSTS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(hosts)))
    os.replace(tmp, path)


def read_hosts(run_dir: Path) -> dict[str, HostSpec]:
    """The run directory's inventory (empty if its nodes are all local)."""
    path = run_dir / HOSTS_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=dict[str, HostSpec])
    except FileNotFoundError:
        return {}
    except msgspec.DecodeError as e:
        raise ClusterError(f"{path} is damaged ({e}); `raftctl down --purge` removes the "
                           "run directory") from None
