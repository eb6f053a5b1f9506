"""Kernel-enforced link faults (`raftctl up --netns`): each node in its own
network namespace with its own address on a private bridge; cuts and loss
are iptables INPUT rules in the receiving node's namespace. Needs root.
Every name derives from the run directory, so `teardown` finds and removes
everything even after raftctl itself crashed. No printing here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import msgspec

from node.transport.links import LinkRule

CHAIN = "RAFTCTL"


class NetnsError(Exception):
    """A namespace, link or rule could not be made; the message says which."""


class NetnsPlan(msgspec.Struct, frozen=True):
    """The names and addresses of one cluster's namespaces."""

    bridge: str
    bridge_ip: str
    namespaces: dict[str, str]
    veths: dict[str, str]
    addresses: dict[str, str]


def unavailable() -> str | None:
    """Why kernel mode cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "--netns needs root (it creates network namespaces and iptables rules)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"--netns needs the `{tool}` command (Debian: iproute2, iptables)"
    return None


def plan(run_dir: Path, node_ids: list[str]) -> NetnsPlan:
    """Deterministic names (interface names have at most 15 characters) and a
    /24 inside 10.200.0.0/13 chosen from the run directory."""
    h = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()
    tag = h[:6]
    net = f"10.{200 + int(h[6:8], 16) % 8}.{int(h[8:10], 16)}"
    if len(node_ids) > 200:
        raise NetnsError("--netns supports at most 200 nodes")
    return NetnsPlan(
        bridge=f"rc{tag}",
        bridge_ip=f"{net}.254",
        namespaces={n: f"rc{tag}-{n}" for n in node_ids},
        veths={n: f"rc{tag}v{i}" for i, n in enumerate(node_ids)},
        addresses={n: f"{net}.{i + 1}" for i, n in enumerate(node_ids)},
    )


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20)
    if check and p.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


def setup(p: NetnsPlan) -> None:
    """Create the bridge, one namespace per node with a veth on the bridge,
    and an empty RAFTCTL chain hooked into each namespace's INPUT."""
    teardown(p)
    try:
        _run("ip", "link", "add", p.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{p.bridge_ip}/24", "dev", p.bridge)
        _run("ip", "link", "set", p.bridge, "up")
        for node, ns in p.namespaces.items():
            veth = p.veths[node]
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "link", "set", veth, "master", p.bridge, "up")
            _run("ip", "-n", ns, "addr", "add", f"{p.addresses[node]}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "netns", "exec", ns, "iptables", "-N", CHAIN)
            _run("ip", "netns", "exec", ns, "iptables", "-I", "INPUT", "-j", CHAIN)
    except NetnsError:
        teardown(p)
        raise


def teardown(p: NetnsPlan) -> list[str]:
    """Remove whatever of `p` exists; returns what was removed."""
    removed = []
    for ns in p.namespaces.values():
        if _run("ip", "netns", "del", ns, check=False).returncode == 0:
            removed.append(ns)
    for veth in p.veths.values():
        _run("ip", "link", "del", veth, check=False)
    if _run("ip", "link", "del", p.bridge, check=False).returncode == 0:
        removed.append(p.bridge)
    return removed


def exists(p: NetnsPlan) -> bool:
    out = _run("ip", "netns", "list", check=False).stdout
    return any(line.split()[0] == ns for line in out.splitlines() if line.strip()
               for ns in p.namespaces.values())


def exec_prefix(p: NetnsPlan, node: str) -> list[str]:
    return ["ip", "netns", "exec", p.namespaces[node]]


def apply_rules(p: NetnsPlan, rules: dict[str, dict[str, LinkRule]]) -> None:
    """Make each namespace's RAFTCTL chain drop what `rules` block or lose.
    `rules[a][b]` is node a's rule for peer b; traffic a->b is dropped at b's
    INPUT (an OUTPUT drop would make the sender's sendto fail instead of
    losing the packet)."""
    for node, ns in p.namespaces.items():
        cmds = [["iptables", "-F", CHAIN]]
        for src in p.namespaces:
            if src == node:
                continue
            out = rules.get(src, {}).get(node, LinkRule())
            inn = rules.get(node, {}).get(src, LinkRule())
            ip = p.addresses[src]
            if out.block_out or inn.block_in:
                cmds.append(["iptables", "-A", CHAIN, "-s", ip, "-j", "DROP"])
            elif out.loss > 0:
                cmds.append(["iptables", "-A", CHAIN, "-s", ip, "-m", "statistic", "--mode",
                             "random", "--probability", f"{out.loss:.6f}", "-j", "DROP"])
        for cmd in cmds:
            _run("ip", "netns", "exec", ns, *cmd)


def transport_part(rule: LinkRule) -> LinkRule:
    """What stays in the node's transport in kernel mode: delay, jitter,
    duplication and reordering (this kernel has no netem)."""
    return msgspec.structs.replace(rule, block_out=False, block_in=False, loss=0.0)


def kernel_rules(p: NetnsPlan) -> dict[str, list[str]]:
    """The RAFTCTL chain of each namespace, as iptables prints it."""
    return {node: _run("ip", "netns", "exec", ns, "iptables", "-S", CHAIN,
                       check=False).stdout.splitlines()[1:]
            for node, ns in p.namespaces.items()}
