"""Inside a pod of the StatefulSet (raftctl/k8s.py): `python -m
raftctl.k8s_pod node` prepares the run directory from the mounted Secret
(this pod's node from its ordinal, bound to its pod IP) and becomes the
node; `... ready` is the readiness probe: exit 0 once the node answers and
knows a leader. Prints only its one-line reason for failing."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import msgspec

from node.config import ClusterConfig
from node.control import StatusRequest
from node.transport.zmq import read_keys
from raftctl.cluster import Cluster, ClusterError
from raftctl.k8s import DATA_MOUNT, SECRET_MOUNT

READY_TIMEOUT_S = 1.0


class _RunDirFile(msgspec.Struct):
    config: ClusterConfig


def node_id(cfg: ClusterConfig, hostname: str) -> str:
    """Pod NAME-i runs the config's i-th node."""
    try:
        ordinal = int(hostname.rsplit("-", 1)[1])
        return cfg.nodes[ordinal].id
    except (IndexError, ValueError):
        raise ClusterError(f"pod {hostname} is not NAME-ORDINAL for one of the "
                           f"{len(cfg.nodes)} nodes (is the StatefulSet scaled past them?)"
                           ) from None


def prepare(secret: Path, run_dir: Path, hostname: str, pod_ip: str) -> str:
    """Write RUN_DIR's config (this node bound to `pod_ip`, the others at
    their DNS names) and keys (0600) from the Secret; returns the node id."""
    cfg = msgspec.json.decode((secret / "cluster.json").read_bytes(), type=_RunDirFile).config
    me = node_id(cfg, hostname)
    # ZeroMQ cannot bind the source of a connection to a DNS name, and the
    # node does: its own address must be the IP.
    nodes = [msgspec.structs.replace(n, host=pod_ip) if n.id == me else n for n in cfg.nodes]
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "cluster.json.tmp"
    tmp.write_bytes(msgspec.json.encode(_RunDirFile(msgspec.structs.replace(cfg, nodes=nodes))))
    os.replace(tmp, run_dir / "cluster.json")
    keys = run_dir / "keys"
    keys.unlink(missing_ok=True)
    shutil.copyfile(secret / "keys", keys)
    keys.chmod(0o600)
    read_keys(keys)  # refuse a damaged Secret here, with the keys file's own message
    (run_dir / "node_id").write_text(me)
    return me


def ready(run_dir: Path) -> str | None:
    """Why this pod's node is not ready, or None if it is."""
    try:
        me = (run_dir / "node_id").read_text().strip()
        r = Cluster(run_dir, "k8s").control(me, StatusRequest(), READY_TIMEOUT_S)
    except (OSError, ClusterError) as e:
        return f"not prepared yet: {e}"
    if r is None or not r.ok or r.data is None:
        return f"node {me} does not answer on its control socket"
    if not r.data.get("leader"):
        return f"node {me} knows no leader"
    return None


def main(argv: list[str]) -> int:
    run_dir = Path(DATA_MOUNT) / "run"
    if argv == ["node"]:
        me = prepare(Path(SECRET_MOUNT), run_dir, os.environ.get("HOSTNAME", ""),
                     os.environ["POD_IP"])
        os.execv(sys.executable, [sys.executable, "-m", "node", "--run-dir", str(run_dir),
                                  "--id", me])
    if argv == ["ready"]:
        why = ready(run_dir)
        if why is not None:
            print(why, file=sys.stderr)
            return 1
        return 0
    print("usage: python -m raftctl.k8s_pod node|ready", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
