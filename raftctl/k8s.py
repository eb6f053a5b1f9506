"""The Kubernetes manifest of a cluster (`raftctl k8s manifest`): a headless
Service, a Secret with the keys and the config, and a StatefulSet with one
pod a node, each ready once its node answers and knows a leader. Plain
data built from the config; nothing here talks to Kubernetes."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from node.config import ClusterConfig, NodeSpec
from node.transport.zmq import CurveKeys

# Inside each pod (raftctl/k8s_pod.py reads the same paths).
SECRET_MOUNT = "/etc/raftctl"
DATA_MOUNT = "/var/lib/raftctl"
READY_PERIOD_S = 2
DEFAULT_STORAGE = "1Gi"


def pod_host(name: str, namespace: str, ordinal: int) -> str:
    """The stable DNS name of pod ORDINAL behind the headless Service."""
    return f"{name}-{ordinal}.{name}.{namespace}.svc.cluster.local"


def pod_config(cfg: ClusterConfig, name: str, namespace: str) -> ClusterConfig:
    """`cfg` as the pods run it: node i on pod i's DNS name, and every node
    on the first node's ports (each pod has an address of its own)."""
    first = cfg.nodes[0]
    nodes = [NodeSpec(id=n.id, host=pod_host(name, namespace, i), peer_port=first.peer_port,
                      client_port=first.client_port, control_port=first.control_port)
             for i, n in enumerate(cfg.nodes)]
    return msgspec.structs.replace(cfg, nodes=nodes, netns="")


def manifest(cfg: ClusterConfig, keys: CurveKeys, *, name: str, namespace: str, image: str,
             storage: str = DEFAULT_STORAGE) -> dict[str, Any]:
    """A `v1 List` of the Service, the Secret and the StatefulSet."""
    pcfg = pod_config(cfg, name, namespace)
    spec = pcfg.nodes[0]
    labels = {"app.kubernetes.io/name": "raftctl", "app.kubernetes.io/instance": name}
    meta = {"name": name, "namespace": namespace, "labels": labels}
    peer_protocol = "UDP" if pcfg.transport == "udp" else "TCP"
    ports = [("peer", spec.peer_port, peer_protocol), ("client", spec.client_port, "TCP"),
             ("control", spec.control_port, "TCP")]
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {
            "clusterIP": "None",
            # Peers must find each other before any is ready: readiness
            # needs a leader, and a leader needs its peers.
            "publishNotReadyAddresses": True,
            "selector": labels,
            "ports": [{"name": n, "port": p, "targetPort": p, "protocol": proto}
                      for n, p, proto in ports],
        },
    }
    secret = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {**meta, "name": f"{name}-keys"},
        "stringData": {
            "keys": json.dumps({"public": keys.public.decode(), "secret": keys.secret.decode()}),
            "cluster.json": msgspec.json.encode({"config": pcfg}).decode(),
        },
    }
    container = {
        "name": "node",
        "image": image,
        "command": ["python", "-m", "raftctl.k8s_pod", "node"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports],
        "readinessProbe": {
            "exec": {"command": ["python", "-m", "raftctl.k8s_pod", "ready"]},
            "periodSeconds": READY_PERIOD_S, "timeoutSeconds": 2, "failureThreshold": 3,
        },
        "volumeMounts": [{"name": "keys", "mountPath": SECRET_MOUNT, "readOnly": True},
                         {"name": "data", "mountPath": DATA_MOUNT}],
    }
    statefulset = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta,
        "spec": {
            "serviceName": name,
            "replicas": len(pcfg.nodes),
            # All at once: with OrderedReady the first pod would wait for a
            # readiness that needs a quorum of pods not yet started.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # SIGTERM makes a leader hand over first: give it time.
                    "terminationGracePeriodSeconds": 15,
                    "containers": [container],
                    "volumes": [{"name": "keys", "secret": {"secretName": f"{name}-keys",
                                                            "defaultMode": 0o400}}],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": storage}}},
            }],
        },
    }
    return {"apiVersion": "v1", "kind": "List", "items": [service, secret, statefulset]}
