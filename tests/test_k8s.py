"""`raftctl k8s manifest`: the objects it renders are valid Kubernetes
objects by the official client's models (every field known, typed and
required ones present), and the pod entry point prepares a node and
answers readiness for real. No Kubernetes cluster is run here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from node.config import ClusterConfig, NodeSpec
from raftctl import k8s_pod
from raftctl.cli import main
from raftctl.cluster import Cluster, ClusterError, free_ports, make_config
from raftctl.k8s import manifest, pod_host
from tests.procs import wait_until

kubernetes = pytest.importorskip("kubernetes")

_MODELS = {"Service": "V1Service", "Secret": "V1Secret", "StatefulSet": "V1StatefulSet"}


def _strip_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_strip_none(x) for x in v]
    return v


@pytest.mark.parametrize("transport", ["zmq", "udp"])
def test_manifest_objects_match_the_kubernetes_schema(tmp_path: Path, transport: str) -> None:
    """Each object deserializes into the client's model for its kind and
    serializes back to exactly what was rendered: no field unknown to the
    API (a typo would be dropped), none of the wrong type, none required
    missing."""
    c = Cluster(tmp_path / "run", "raft")
    c.create(make_config(3, name="raft", transport=transport))
    r = CliRunner().invoke(main, ["--run-dir", str(c.run_dir), "k8s", "manifest",
                                  "--image", "raftctl:0.1.0", "--namespace", "db"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["kind"] == "List"
    api = kubernetes.client.ApiClient()
    kinds = []
    for item in doc["items"]:
        model = api.deserialize(json.dumps(item), _MODELS[item["kind"]], None)
        back = _strip_none(api.sanitize_for_serialization(model))
        assert back == item, f"{item['kind']} changed on a round trip through the schema"
        kinds.append(item["kind"])
    assert kinds == ["Service", "Secret", "StatefulSet"]
    svc, secret, sts = doc["items"]
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "raft"
    assert sts["spec"]["replicas"] == 3
    probe = sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["exec"]["command"][-1] == "ready"
    peer = next(p for p in svc["spec"]["ports"] if p["name"] == "peer")
    assert peer["protocol"] == ("UDP" if transport == "udp" else "TCP")
    cfg = json.loads(secret["stringData"]["cluster.json"])["config"]
    assert [n["host"] for n in cfg["nodes"]] == [pod_host("raft", "db", i) for i in range(3)]
    assert json.loads(secret["stringData"]["keys"]) == {
        "public": c.keys().public.decode(), "secret": c.keys().secret.decode()}


def test_a_bad_name_is_refused(tmp_path: Path) -> None:
    """A name Kubernetes would refuse is a usage error, before anything prints."""
    c = Cluster(tmp_path / "run", "raft")
    c.create(make_config(3, name="raft"))
    r = CliRunner().invoke(main, ["--run-dir", str(c.run_dir), "k8s", "manifest",
                                  "--image", "x", "--name", "Raft_1"])
    assert r.exit_code == 2 and "DNS label" in r.output, r.output


def test_pod_entry_prepares_its_node_and_answers_readiness(tmp_path: Path) -> None:
    """From a one-node manifest's Secret: the pod entry point writes the
    run directory (this pod's node on the pod IP, keys 0600), the node
    starts from it, and the readiness probe passes once it leads."""
    ports = free_ports(3)
    cfg = ClusterConfig(name="raft", nodes=[NodeSpec(
        id="n1", peer_port=ports[0], client_port=ports[1], control_port=ports[2])])
    c = Cluster(tmp_path / "src", "raft")
    c.create(cfg)
    doc = manifest(c.config(), c.keys(), name="raft", namespace="default", image="x")
    secret = tmp_path / "secret"
    secret.mkdir()
    for k, v in doc["items"][1]["stringData"].items():
        (secret / k).write_text(v)
    run = tmp_path / "data" / "run"
    assert k8s_pod.prepare(secret, run, "raft-0", "127.0.0.1") == "n1"
    assert (run / "keys").stat().st_mode & 0o777 == 0o600
    assert k8s_pod.ready(run) is not None, "ready before the node runs"
    proc = subprocess.Popen([sys.executable, "-m", "node", "--run-dir", str(run), "--id", "n1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: k8s_pod.ready(run) is None, 10, "the probe to pass")
    finally:
        psutil.Process(proc.pid).kill()
        proc.wait(5)
    with pytest.raises(ClusterError, match="NAME-ORDINAL"):
        k8s_pod.prepare(secret, run, "raft-3", "127.0.0.1")
