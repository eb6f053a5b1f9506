"""Clock skew on a cluster's hosts, the chaos fault `clock`: a host's wall
clock set ahead or back over SSH, and set back by the same amount on repair.
Only where it is real: every node on a kernel of its own (a clock is the
kernel's, so two hosts sharing one would move together, and this machine's
with them), and a login allowed to set it. Anything else is reported
unavailable, never imitated."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from raftctl.cluster import ClusterError, ClusterUnavailable
from raftctl.remote.ssh import SshTarget, sh

if TYPE_CHECKING:
    from raftctl.remote.cluster import HostCluster

CLOCK_FILE = "clock.json"
# CAP_SYS_TIME in /proc/PID/status CapEff: what setting the clock needs.
_CAP_SYS_TIME_BIT = 25
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


class _Probe(msgspec.Struct, frozen=True):
    boot_id: str
    may_set: bool


async def _probe(c: HostCluster, t: SshTarget) -> _Probe:
    out = (await c.pool.run(t, sh(f"cat {_BOOT_ID}; id -u; "
                                  "sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status"))
           ).stdout.split()
    if len(out) != 3:
        raise ClusterError(f"{t.label()}: cannot tell its kernel and rights ({' '.join(out)})")
    caps = int(out[2], 16)
    return _Probe(out[0], out[1] == "0" or bool(caps >> _CAP_SYS_TIME_BIT & 1))


def unavailable(c: HostCluster) -> str | None:
    """Why clock skew cannot be a fault of this cluster, or None if it can."""
    local = [n for n in c.node_ids() if c.host(n) is None]
    if local:
        return (f"{', '.join(local)} run on this machine, whose clock raftctl will not move; "
                "clock skew needs every node on a host of its own")
    nodes_of: dict[SshTarget, list[str]] = {}
    for n, h in c.hosts().items():
        nodes_of.setdefault(h.target(), []).append(n)
    probes = c.pool.each(nodes_of, lambda t: _probe(c, t))
    here = Path(_BOOT_ID).read_text().strip()
    kernels: dict[str, list[str]] = {}
    for t, p in probes.items():
        names = ", ".join(nodes_of[t])
        if isinstance(p, ClusterError):
            return f"the host of {names} cannot be asked: {p}"
        if p.boot_id == here:
            return (f"the host of {names} runs on this machine's kernel (same boot id), so "
                    "setting its clock would set this machine's")
        if not p.may_set:
            return (f"the login on the host of {names} may not set the clock (needs root or "
                    "CAP_SYS_TIME)")
        kernels.setdefault(p.boot_id, []).extend(nodes_of[t])
    shared = [ns for ns in kernels.values() if len(ns) > 1 and len(
        {c.hosts()[n].target() for n in ns}) > 1]
    if shared:
        return (f"the hosts of {', '.join(shared[0])} share one kernel (same boot id), so "
                "their clocks cannot differ")
    return None


def _read(c: HostCluster) -> dict[str, float]:
    try:
        return msgspec.json.decode((c.run_dir / CLOCK_FILE).read_bytes(), type=dict[str, float])
    except FileNotFoundError:
        return {}


def _write(c: HostCluster, offsets: dict[str, float]) -> None:
    path = c.run_dir / CLOCK_FILE
    if not offsets:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(offsets))
    os.replace(tmp, path)


async def _shift(c: HostCluster, t: SshTarget, python: str, offset_s: float) -> None:
    script = ("import time; time.clock_settime(time.CLOCK_REALTIME, "
              f"time.clock_gettime(time.CLOCK_REALTIME) + {offset_s!r})")
    await c.pool.run(t, sh(f"{shlex.quote(python)} -c {shlex.quote(script)}"))


def skew(c: HostCluster, node: str, offset_s: float) -> None:
    """Move the wall clock of `node`'s host by `offset_s` (and every node
    on that host with it); the offset is recorded until `reset`."""
    why = unavailable(c)
    if why is not None:
        raise ClusterUnavailable(f"clock skew is unavailable: {why}")
    h = c.host(node)
    assert h is not None, "unavailable() checked that every node has a host"
    t = h.target()
    c.pool.sync(_shift(c, t, h.python, offset_s))
    offsets = _read(c)
    offsets[t.label()] = offsets.get(t.label(), 0.0) + offset_s
    _write(c, {k: v for k, v in offsets.items() if abs(v) > 1e-6})


def reset(c: HostCluster) -> list[str]:
    """Undo every recorded skew; returns the hosts set back."""
    offsets = _read(c)
    if not offsets:
        return []
    by_label = {h.target().label(): h for h in c.hosts().values()}
    done = []
    for label, off in list(offsets.items()):
        h = by_label.get(label)
        if h is not None:
            c.pool.sync(_shift(c, h.target(), h.python, -off))
        offsets.pop(label)
        _write(c, offsets)
        done.append(label)
    return done
