"""Kernel-enforced link faults on a cluster's hosts (`--kernel`): the shell
scripts that put them in place and take them away, run over SSH by the
supervisor. Cuts and loss are iptables INPUT rules on the receiving host;
delay, jitter, duplication and reordering are netem on the sending host
where its kernel has netem, and stay in the nodes' transports where not.

Every rule matches the sending node's address and the receiving node's peer
port, so client, control and SSH traffic is never cut. Everything lives in
one iptables chain and one root qdisc per host device, named from the run
directory, so `heal` and `down` remove exactly what was made. No I/O here.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import msgspec

from node.config import NodeSpec
from node.transport.links import LinkRule

# prio has at most 16 bands: band 1 takes all other traffic, so one device
# carries netem for at most 15 links.
NETEM_MAX_LINKS_PER_DEVICE = 15
# Probing for netem must not touch the host's own network: a namespace that
# exists only for the probe, which goes with it.
NETEM_PROBE = ("unshare --net sh -c 'ip link set lo up && tc qdisc add dev lo root netem "
               "delay 1ms' >/dev/null 2>&1 && echo yes || echo no")


def chain_name(run_dir: Path) -> str:
    """The iptables chain of this cluster on every host (at most 28 characters)."""
    return "RAFTCTL-" + hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:10]


def _link_rules(rules: dict[str, dict[str, LinkRule]], src: str, dst: str,
                ) -> tuple[LinkRule, LinkRule]:
    """(src's rule towards dst, dst's rule from src)."""
    return rules.get(src, {}).get(dst, LinkRule()), rules.get(dst, {}).get(src, LinkRule())


def _match(src: NodeSpec, dst: NodeSpec, udp: bool) -> list[str]:
    """Packets from node src to node dst's peer port. Over UDP the source
    port is src's peer port too, which tells apart nodes sharing an address."""
    m = ["-s", f"{src.host}/32", "-d", f"{dst.host}/32", "-p", "udp" if udp else "tcp",
         "--dport", str(dst.peer_port)]
    return [*m, "--sport", str(src.peer_port)] if udp else m


def input_rules(chain: str, rules: dict[str, dict[str, LinkRule]], nodes: list[NodeSpec],
                receivers: list[str], udp: bool) -> list[str]:
    """The chain's rules (iptables-restore syntax) on a host whose nodes are
    `receivers`: a->b is dropped at b's way in, as a sender's OUTPUT drop
    would make its send fail instead of losing the packet."""
    by_id = {n.id: n for n in nodes}
    lines = []
    for dst in receivers:
        for src in by_id:
            if src == dst:
                continue
            out, inn = _link_rules(rules, src, dst)
            m = _match(by_id[src], by_id[dst], udp)
            if out.block_out or inn.block_in:
                lines.append(" ".join(["-A", chain, *m, "-j", "DROP"]))
            elif out.loss > 0:
                lines.append(" ".join(["-A", chain, *m, "-m", "statistic", "--mode", "random",
                                       "--probability", f"{out.loss:.6f}", "-j", "DROP"]))
    return lines


def iptables_script(chain: str) -> str:
    """Make the chain and hook it first into INPUT if not there, then load
    the rules read from stdin (iptables-restore --noflush, atomic)."""
    c = shlex.quote(chain)
    return (f"iptables -N {c} 2>/dev/null; "
            f"iptables -C INPUT -j {c} 2>/dev/null || iptables -I INPUT 1 -j {c} && "
            "iptables-restore --noflush")


def restore_input(chain: str, lines: list[str]) -> str:
    """The iptables-restore text that replaces the chain's rules with `lines`."""
    return "\n".join(["*filter", f"-F {chain}", *lines, "COMMIT", ""])


def _netem_args(rule: LinkRule) -> list[str]:
    args = []
    if rule.delay_ms or rule.jitter_ms or rule.reorder:
        # netem reorders only packets it does not delay: reordering needs a delay.
        delay = rule.delay_ms or (1.0 if rule.reorder else 0.0)
        args += ["delay", f"{delay:g}ms"] + ([f"{rule.jitter_ms:g}ms"] if rule.jitter_ms else [])
    if rule.duplicate:
        args += ["duplicate", f"{rule.duplicate * 100:g}%"]
    if rule.reorder:
        args += ["reorder", f"{rule.reorder * 100:g}%"]
    return args


def netem_script(rules: dict[str, dict[str, LinkRule]], nodes: list[NodeSpec],
                 senders: list[str]) -> str:
    """Replace the netem of a host whose nodes are `senders`: per device
    towards a peer, a prio qdisc whose band 1 passes everything, and one
    netem band per faulty link chosen by a u32 filter on source address,
    destination address and destination port. No faulty link: nothing to
    run (`netem_clear_script` has removed the old qdisc). Raises ValueError
    past NETEM_MAX_LINKS_PER_DEVICE links."""
    by_id = {n.id: n for n in nodes}
    links: list[tuple[NodeSpec, NodeSpec, list[str]]] = []
    for sender in senders:
        for peer, rule in sorted(rules.get(sender, {}).items()):
            args = _netem_args(rule)
            if args and peer in by_id:
                links.append((by_id[sender], by_id[peer], args))
    if not links:
        return ""
    # The devices are found on the host: the route to each peer says which.
    lines = ["set -e", "devs=''"]
    for i, (_, to, _) in enumerate(links):
        lines.append(f"d{i}=$(ip -o route get {shlex.quote(to.host)} | "
                     "sed -n 's/.* dev \\([^ ]*\\).*/\\1/p')")
        lines.append(f'case " $devs " in *" $d{i} "*) ;; *) devs="$devs $d{i}";; esac')
    lines.append('for d in $devs; do tc qdisc del dev "$d" root 2>/dev/null || true; done')
    lines.append("for d in $devs; do tc qdisc add dev \"$d\" root handle 1: prio bands 16 "
                 "priomap " + " ".join(["0"] * 16) + "; done")
    if len(links) > NETEM_MAX_LINKS_PER_DEVICE:
        raise ValueError(f"netem in the kernel takes at most {NETEM_MAX_LINKS_PER_DEVICE} "
                         f"links a host, and {len(links)} were asked for")
    for i, (frm, to, args) in enumerate(links):
        band = i + 2
        lines.append(f'tc qdisc add dev "$d{i}" parent 1:{band} handle {band}0: netem '
                     + " ".join(args))
        lines.append(f'tc filter add dev "$d{i}" parent 1: protocol ip prio 1 u32 '
                     f"match ip src {frm.host}/32 match ip dst {to.host}/32 "
                     f"match ip dport {to.peer_port} 0xffff flowid 1:{band}")
    return "\n".join(lines) + "\n"


def netem_clear_script(devices_of: list[str]) -> str:
    """Remove the root qdisc this cluster put on the devices towards
    `devices_of` (peer addresses), restoring the kernel's default."""
    lines = [f"d=$(ip -o route get {shlex.quote(a)} | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p'); "
             'tc qdisc show dev "$d" root | grep -q "prio 1: " && '
             'tc qdisc del dev "$d" root 2>/dev/null; true' for a in devices_of]
    return "\n".join(lines) + "\n"


def teardown_script(chain: str) -> str:
    c = shlex.quote(chain)
    return (f"iptables -D INPUT -j {c} 2>/dev/null; iptables -F {c} 2>/dev/null; "
            f"iptables -X {c} 2>/dev/null; true")


def transport_part(rule: LinkRule, netem: bool) -> LinkRule:
    """What stays in the node's transport: all but cuts and loss, and with
    netem on the sending host, none of delay, jitter, duplicate, reorder."""
    rule = msgspec.structs.replace(rule, block_out=False, block_in=False, loss=0.0)
    if netem:
        rule = msgspec.structs.replace(rule, delay_ms=0.0, jitter_ms=0.0, duplicate=0.0,
                                       reorder=0.0)
    return rule

