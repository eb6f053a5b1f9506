"""A cluster's files and names, before any process: the cluster file
(`cluster.json`), the cluster file an operator writes (TOML), names and
homes of run directories, free ports, and the errors the supervisor
raises. `raftctl/cluster.py` (the supervisor) builds on it."""

from __future__ import annotations

import random
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from node.config import ClusterConfig, NodeSpec

DEFAULT_CLUSTER = "default"
RUN_DIR_ENV = "RAFTCTL_RUN_DIR"
CLUSTER_ENV = "RAFTCTL_CLUSTER"
HOME_ENV = "RAFTCTL_HOME"
# Where a cluster's run directory goes when no home is given: under the
# current directory, as raftctl always did.
DEFAULT_HOME_NAME = ".raftctl"
# A cluster name is a directory name under the clusters' home: a plain
# identifier, so that no name (`../../etc`) leads out of it.
CLUSTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
PORT_RANGE_LOW = 20000


class ClusterError(Exception):
    """Something the operator asked for cannot be done; the message says why
    and, where there is one, what to do."""


class ClusterUnavailable(ClusterError):
    """The cluster, or a node the request needs, is not there to ask: not set
    up, not running, no leader, or no answer."""


class UnknownNode(ClusterError):
    """A node name that is not in the cluster."""


class NotYetExited(ClusterError):
    """`node` was sent SIGKILL but is still there: a process inside a
    request to a stalled disk (or FUSE mount) exits only when it ends. It
    will go; until then it must not be started again."""

    # How a chaos run's nemesis tells it from a failed kill (chaos/nemesis.py).
    still_exiting = True

    def __init__(self, node: str, message: str) -> None:
        super().__init__(message)
        self.node = node


class ProcessInfo(msgspec.Struct, frozen=True):
    pid: int
    create_time: float


# How far a process's start time, as psutil reads it, may be from the one
# recorded when it started and still be the same process. psutil adds the
# kernel's boot time, in whole seconds of the wall clock, to the ticks since
# boot: when the clock is adjusted across a second's edge, every start time
# moves by a second. With a tolerance of 50 ms a live node was once taken
# for "not running" (a chaos run's pause failed) and a test's reaper skipped
# its nodes. A pid reused within two seconds of the first start would need
# the pid counter to wrap around in that time.
START_TIME_TOLERANCE_S = 2.0


def started_at(create_time: float, recorded: float) -> bool:
    """A process that psutil says started at `create_time` is the one
    recorded as started at `recorded`."""
    return abs(create_time - recorded) <= START_TIME_TOLERANCE_S


class ClusterFile(msgspec.Struct):
    """`cluster.json`: the config the nodes read, the processes we started,
    and the nodes removed from the cluster (`raftctl member remove`: kept in
    `config.nodes` with their addresses, never counted as nodes again).
    `launching` records, before a node is launched, that it is about to be
    (node -> wall-clock time): a raftctl killed between the launch and the
    recording of the pid leaves it, and the next command adopts the process."""

    config: ClusterConfig
    processes: dict[str, ProcessInfo] = {}
    removed: list[str] = []
    launching: dict[str, float] = {}


def default_home() -> Path:
    """`./.raftctl`: the home of clusters when neither --home nor RAFTCTL_HOME is given."""
    return Path.cwd() / DEFAULT_HOME_NAME


def check_cluster_name(name: str) -> str:
    """`name`, if it is a plain identifier; raises ClusterError otherwise."""
    if not CLUSTER_NAME.fullmatch(name):
        raise ClusterError(f"{name!r} is not a cluster name: a cluster name is 1-64 letters, "
                           "digits, '.', '-' or '_', starting with a letter or digit")
    return name


def default_run_dir(name: str, home: Path | None = None) -> Path:
    """`HOME/NAME` (HOME: `./.raftctl` by default); the option `--run-dir` or
    RAFTCTL_RUN_DIR overrides it."""
    return (home or default_home()) / check_cluster_name(name)


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports, free right now for TCP and UDP on `host`, chosen
    below the kernel's ephemeral range. A port from that range can be taken
    while its node is down: as the source port of any outgoing connection,
    or by a peer's reconnect attempt to it connecting to itself (TCP
    simultaneous open), and then the node cannot start again."""
    lo = PORT_RANGE_LOW
    hi = min(_ephemeral_range()[0], 65536)
    if hi - lo < 4 * n:
        lo, hi = 1024, 65536
    rng = random.Random()
    out: list[int] = []
    for _ in range(200 * n):
        if len(out) == n:
            return out
        port = rng.randrange(lo, hi)
        if port not in out and not port_in_use(host, port) \
                and not port_in_use(host, port, udp=True):
            out.append(port)
    raise ClusterError(f"could not find {n} free ports on {host} between {lo} and {hi}")


def make_config(n: int, name: str = DEFAULT_CLUSTER, transport: str = "zmq",
                **settings: Any) -> ClusterConfig:
    if n < 1:
        raise ClusterError("a cluster needs at least 1 node (-n)")
    if n > 15:
        raise ClusterError(f"{n} nodes is more than this tool runs on one machine (at most 15)")
    ports = free_ports(3 * n)
    nodes = [
        NodeSpec(id=f"n{i + 1}", peer_port=ports[3 * i], client_port=ports[3 * i + 1],
                 control_port=ports[3 * i + 2])
        for i in range(n)
    ]
    cfg = ClusterConfig(name=name, transport=transport, nodes=nodes, **settings)
    _validate(cfg, "generated config")
    return cfg


def load_config_file(path: Path, name: str | None = None) -> ClusterConfig:
    """Read a TOML cluster file, with a clear message for each problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ClusterError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ClusterError(f"{path} is not valid TOML: {e}") from None
    if name is not None:
        raw["name"] = name
    if "netns" in raw:
        raise ClusterError(f"{path}: netns: kernel mode is chosen with `raftctl up --netns`, "
                           "which also gives the nodes their addresses; remove it from the file")
    # [hosts] and [ssh] are the inventory of a multi-host cluster (raftctl/remote/).
    unknown = sorted(set(raw) - set(ClusterConfig.__struct_fields__) - {"hosts", "ssh"})
    if unknown:
        known = ", ".join(sorted(f for f in ClusterConfig.__struct_fields__ if f != "netns"))
        raise ClusterError(f"{path}: unknown setting{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join(unknown)} (known: {known})")
    try:
        cfg = msgspec.convert(raw, ClusterConfig)
    except msgspec.ValidationError as e:
        raise ClusterError(f"{path}: {e}") from None
    _validate(cfg, str(path))
    return cfg


def _validate(cfg: ClusterConfig, where: str) -> None:
    problems = cfg.problems()
    if problems:
        raise ClusterError(f"{where}: " + "; ".join(problems))


def port_in_use(host: str, port: int, udp: bool = False) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class NodeState:
    """What the supervisor can tell of one node."""

    id: str
    pid: int | None
    process: str  # running | paused | down
    status: dict[str, Any] | None  # the node's own status, if it answered


def leader_of(states: list[NodeState]) -> str | None:
    """The leader of the highest term that a live node reports."""
    best: tuple[int, str] | None = None
    for s in states:
        st = s.status
        if st and st.get("role") == "leader" and (best is None or st["term"] > best[0]):
            best = (st["term"], s.id)
    return best[1] if best else None
