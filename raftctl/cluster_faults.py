"""The supervisor's link faults: recorded in the run directory, pushed to
each node's transport over its control socket, and in kernel mode (`up
--netns`) set as iptables rules in the nodes' network namespaces. A part of
`Cluster` (raftctl/cluster.py), kept apart as the faults' own room."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from chaos.faults import FaultState, compile_rules
from node.config import ClusterConfig, node_dir
from node.control import ControlRequest, ControlResponse, SetLinksRequest
from node.private_files import write_private
from node.transport.links import LinkRule
from raftctl import netns
from raftctl.clusterfile import ClusterError


class ClusterFaults:
    """Link faults of a cluster; `Cluster` supplies the rest."""

    run_dir: Path

    if TYPE_CHECKING:
        def config(self) -> ClusterConfig: ...
        def node_ids(self) -> list[str]: ...
        def exists(self) -> bool: ...
        def locked(self) -> AbstractContextManager[None]: ...
        def process_state(self, node_id: str) -> tuple[int | None, str]: ...
        def control(self, node_id: str, req: ControlRequest,
                    timeout_s: float = ...) -> ControlResponse | None: ...

    def kernel(self) -> netns.Kernel:
        """The kernel-mode plumbing of this cluster (config().netns is set)."""
        return netns.kernel(self.config().kernel_mode(), self.run_dir, self.node_ids())

    def with_netns_addresses(self, cfg: ClusterConfig, mode: str) -> ClusterConfig:
        """`cfg` in kernel mode `mode`: each node at its own address; in a
        sandbox, clients reach it through Unix sockets in the run directory."""
        k = netns.kernel(mode, self.run_dir, [n.id for n in cfg.nodes])
        ipc_dir = str((self.run_dir / "sock").resolve()) if mode == "sandbox" else ""
        nodes = [msgspec.structs.replace(n, host=k.addresses[n.id], ipc_dir=ipc_dir)
                 for n in cfg.nodes]
        cfg = msgspec.structs.replace(cfg, nodes=nodes, netns=mode)
        if problems := cfg.problems():
            raise ClusterError("; ".join(problems))
        return cfg

    def prepare_kernel(self) -> None:
        """Kernel mode: (re)create the namespaces, and re-apply the recorded
        faults to them, before any node starts."""
        mode = self.config().kernel_mode()
        if not mode:
            return
        why = netns.unavailable(mode)
        if why is not None:
            raise ClusterError(why)
        try:
            self.kernel().setup()
        except netns.NetnsError as e:
            raise ClusterError(str(e)) from None
        self.apply_faults(self.load_faults())

    def teardown_kernel(self) -> list[str]:
        """Remove the namespaces (also after a crash); returns what went."""
        if not self.exists():
            return []
        mode = self.config().kernel_mode()
        if not mode or netns.unavailable(mode):
            return []
        return self.kernel().teardown()

    def set_links(self, node_id: str, rules: dict[str, LinkRule]) -> bool:
        """Record the node's link rules (a node started later loads them) and
        push them to the node if it runs; True if it confirmed."""
        write_private(node_dir(self.run_dir, node_id) / "links.json", msgspec.json.encode(rules))
        if self.process_state(node_id)[1] != "running":
            return False
        r = self.control(node_id, SetLinksRequest(rules=rules))
        return r is not None and r.ok

    def load_faults(self) -> FaultState:
        path = self.run_dir / "faults.json"
        if not path.exists():
            return FaultState()
        try:
            return msgspec.json.decode(path.read_bytes(), type=FaultState)
        except msgspec.DecodeError as e:
            raise ClusterError(f"{path} is damaged ({e}); `raftctl heal` resets it") from None

    def apply_faults(self, state: FaultState) -> list[str]:
        """Record `state` and push each node's rules; returns the nodes that
        did not confirm (not running: they load the rules when started)."""
        with self.locked():
            nodes = self.node_ids()
            write_private(self.run_dir / "faults.json",
                          msgspec.json.format(msgspec.json.encode(state)))
            rules = compile_rules(state, nodes)
            if self.config().kernel_mode():
                # Cuts and loss in the kernel; the rest stays in the transport.
                try:
                    self.kernel().apply_rules(rules)
                except netns.NetnsError as e:
                    raise ClusterError(str(e)) from None
                rules = {n: {p: r for p, r in ((p, netns.transport_part(r))
                                               for p, r in rules[n].items()) if r != LinkRule()}
                         for n in nodes}
            return [n for n in nodes if not self.set_links(n, rules[n])]
