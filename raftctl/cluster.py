"""The supervisor: a cluster's run directory, and starting, stopping, killing
and pausing its node processes. It talks to nodes only through their control
sockets and signals; it never prints (the CLI renders).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
import zmq

from chaos.faults import compile_rules
from node.config import ClusterConfig, NodeSpec, node_dir
from node.control import (
    CompactRequest,
    ControlRequest,
    ControlResponse,
    DigestRequest,
    SetLinksRequest,
    StatusRequest,
    TransferRequest,
    decode_response,
    encode_request,
)
from node.private_files import open_private, private_dir, write_private
from node.transport.links import LinkRule
from node.transport.zmq import (
    CurveKeys,
    KeysError,
    generate_keys,
    make_client_socket,
    read_keys,
    write_keys,
)
from raftctl import netns
from raftctl.cluster_faults import ClusterFaults
from raftctl.clusterfile import (
    CLUSTER_ENV,
    CLUSTER_NAME,
    DEFAULT_CLUSTER,
    DEFAULT_HOME_NAME,
    HOME_ENV,
    PORT_RANGE_LOW,
    RUN_DIR_ENV,
    ClusterError,
    ClusterFile,
    ClusterUnavailable,
    NodeState,
    NotYetExited,
    ProcessInfo,
    UnknownNode,
    check_cluster_name,
    default_home,
    default_run_dir,
    free_ports,
    leader_of,
    load_config_file,
    make_config,
    port_in_use,
    started_at,
)
from raftctl.procscan import data_left, output_since, unrecorded

# The names callers import from here: the supervisor, and the files and
# errors it is built on (raftctl/clusterfile.py).
__all__ = ["CLUSTER_ENV", "CLUSTER_NAME", "CONTROL_TIMEOUT_S", "DEFAULT_CLUSTER",
    "DEFAULT_HOME_NAME", "HOME_ENV", "PORT_RANGE_LOW", "RUN_DIR_ENV", "Cluster",
    "ClusterError", "ClusterFile", "ClusterUnavailable", "NodeState", "ProcessInfo",
    "UnknownNode", "check_cluster_name", "default_home", "default_run_dir", "free_ports",
    "leader_of", "load_config_file", "make_config", "port_in_use"]

CONTROL_TIMEOUT_S = 1.0
# How long a SIGKILLed node may take to be gone before the supervisor says
# so: a process inside a request to a stalled disk (or FUSE mount) exits
# only when the request ends.
KILL_WAIT_S = 5.0


def _threads_left(pid: int) -> int:
    """Threads of `pid` not yet gone. A killed node's main thread turns
    zombie (waiting for a parent, often init, to reap it) while ZeroMQ's
    threads may still be exiting, and its sockets close only when the last
    of them has: only then is the node gone and its ports free."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _pids(procs: dict[str, psutil.Process]) -> str:
    return ", ".join(f"{n} pid {p.pid}" for n, p in sorted(procs.items()))


class Cluster(ClusterFaults):
    """One cluster's run directory and processes."""

    def __init__(self, run_dir: Path, name: str = DEFAULT_CLUSTER) -> None:
        self.run_dir = run_dir
        self.name = name
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._config: ClusterConfig | None = None
        self._removed: list[str] = []
        self._file_key: tuple[int, int] | None = None
        self._keys: CurveKeys | None = None
        # Where each node's stdout.log ended when this object launched it.
        self._launch_offsets: dict[str, int] = {}

    # --- files ----------------------------------------------------------------

    @property
    def file(self) -> Path:
        return self.run_dir / "cluster.json"

    def exists(self) -> bool:
        return self.file.exists()

    def load(self) -> ClusterFile:
        try:
            cf = msgspec.json.decode(self.file.read_bytes(), type=ClusterFile)
        except FileNotFoundError:
            raise self._not_set_up() from None
        except msgspec.DecodeError as e:
            raise ClusterError(f"{self.file} is damaged ({e}); `raftctl down --purge` "
                               "removes the run directory") from None
        if cf.launching:
            return self._adopt_launched(cf)
        return cf

    def _not_set_up(self) -> ClusterError:
        """Why there is no cluster here, naming what is left of one."""
        orphans = self.orphans()
        if orphans:
            return ClusterError(
                f"{self.file} is missing, but node processes of this run directory still run "
                f"({_pids(orphans)}): `raftctl down` stops them, or restore cluster.json")
        left = data_left(self.run_dir) if self.run_dir.is_dir() else []
        if left:
            return ClusterUnavailable(
                f"{self.file} is missing, but the run directory holds a cluster's data "
                f"({', '.join(left)}): restore cluster.json, or `raftctl down --purge` "
                "removes it all")
        return ClusterUnavailable(
            f"cluster {self.name} is not set up in {self.run_dir}; start it with `raftctl up`")

    def orphans(self) -> dict[str, psutil.Process]:
        """Node processes of this run directory that cluster.json does not
        name (all of them, if it is gone)."""
        try:
            cf = msgspec.json.decode(self.file.read_bytes(), type=ClusterFile)
            recorded = {i.pid for i in cf.processes.values()}
        except (OSError, msgspec.DecodeError):
            recorded = set()
        return unrecorded(self.run_dir, recorded)

    def _adopt_launched(self, cf: ClusterFile) -> ClusterFile:
        """Nodes recorded as launching: the process of each that runs is
        taken into the record, and the intent is cleared. Saved only if the
        run directory's lock is free now, and then into the file as it is
        under the lock, never `cf`: that was read before, and a `start`
        that finished since (recording another node's new pid) would be
        undone by saving it. Returns what to use: the saved file, or `cf`
        adopted in memory when the lock is held (the next change saves it)."""
        try:
            fd = open_private(self.run_dir / "lock", os.O_RDWR)
        except OSError:
            return self._adopt_into(cf)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held (BlockingIOError), or no lock to be had
                return self._adopt_into(cf)
            try:
                fresh = msgspec.json.decode(self.file.read_bytes(), type=ClusterFile)
            except (OSError, msgspec.DecodeError):
                return self._adopt_into(cf)
            if fresh.launching:
                self._adopt_into(fresh)
                with contextlib.suppress(OSError):
                    self._save(fresh)
            return fresh
        finally:
            os.close(fd)

    def _adopt_into(self, cf: ClusterFile) -> ClusterFile:
        found = unrecorded(self.run_dir, {i.pid for i in cf.processes.values()})
        for node in list(cf.launching):
            p = found.get(node)
            if p is not None:
                with contextlib.suppress(psutil.Error):
                    cf.processes[node] = ProcessInfo(p.pid, p.create_time())
            del cf.launching[node]
        return cf

    def _save(self, cf: ClusterFile) -> None:
        write_private(self.file, msgspec.json.format(msgspec.json.encode(cf)), sync=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise changes to the run directory between raftctl commands."""
        private_dir(self.run_dir)
        fd = open_private(self.run_dir / "lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # which releases the lock

    def config(self) -> ClusterConfig:
        # Read again only when the file changed (`raftctl member` adds and
        # removes nodes), not on every control request (`watch` polls).
        try:
            st = self.file.stat()
            key = (st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        if self._config is None or key != self._file_key:
            cf = self.load()
            self._config, self._removed, self._file_key = cf.config, cf.removed, key
        return self._config

    def removed_ids(self) -> list[str]:
        """Nodes removed from the cluster (`raftctl member remove`)."""
        self.config()
        return list(self._removed)

    @contextlib.contextmanager
    def edit(self) -> Iterator[ClusterFile]:
        """Change `cluster.json` under the run directory's lock: the file
        as it is now, saved as the block leaves it."""
        with self.locked():
            cf = self.load()
            yield cf
            self._save(cf)

    def keys(self) -> CurveKeys:
        if self._keys is None:
            try:
                self._keys = read_keys(self.run_dir / "keys")
            except KeysError as e:
                raise ClusterError(str(e)) from None
        return self._keys

    def node_ids(self) -> list[str]:
        """The cluster's nodes, those removed from it left out."""
        cfg = self.config()
        return [n.id for n in cfg.nodes if n.id not in self._removed]

    def check_nodes(self, names: list[str]) -> list[str]:
        ids = self.node_ids()
        for n in names:
            if n not in ids:
                raise UnknownNode(
                    f"node {n} is not in cluster {self.name} (nodes: {', '.join(ids)})")
        return names

    def log_path(self, node_id: str) -> Path:
        return node_dir(self.run_dir, node_id) / "node.log"

    def last_leader(self) -> str | None:
        """The node that led when the supervisor last saw a leader."""
        try:
            node = (self.run_dir / "last_leader").read_text().strip()
        except OSError:
            return None
        return node if node in self.node_ids() else None

    def remember_leader(self, node_id: str) -> None:
        if self.last_leader() == node_id:
            return
        # A hint only: a run directory we cannot write to costs a slower start.
        with contextlib.suppress(OSError):
            write_private(self.run_dir / "last_leader", node_id.encode())

    # --- setting up -------------------------------------------------------------

    def create(self, cfg: ClusterConfig) -> None:
        """Write a new run directory for `cfg` (refuses if one is there, or
        if what is there is left of one: new keys over its data would make
        its nodes strangers to each other)."""
        with self.locked():
            if self.exists():
                raise ClusterError(f"cluster {self.name} already exists in {self.run_dir}")
            left = data_left(self.run_dir)
            orphans = self.orphans()
            if left or orphans:
                running = f"; its nodes still run ({_pids(orphans)}): `raftctl down` stops " \
                    "them" if orphans else ""
                raise ClusterError(
                    f"{self.run_dir} has no cluster.json but holds a cluster's data "
                    f"({', '.join(left) or 'running nodes'}){running}. raftctl makes no new "
                    "keys for a cluster whose data exists: restore cluster.json, or "
                    "`raftctl down --purge` removes the run directory")
            for n in cfg.nodes:
                private_dir(node_dir(self.run_dir, n.id) / "data")
                if n.ipc_dir:
                    private_dir(Path(n.ipc_dir))
            write_keys(self.run_dir / "keys", generate_keys())
            if not cfg.initial_members:
                # Fixed now: later members join this configuration.
                cfg = msgspec.structs.replace(cfg, initial_members=[n.id for n in cfg.nodes])
            self._save(ClusterFile(config=cfg))

    def purge(self) -> None:
        import shutil

        if self.running_nodes() or self.orphans():
            raise ClusterError(f"cluster {self.name} is running; `raftctl down` first")
        self.teardown_kernel()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # --- processes -------------------------------------------------------------

    def _process(self, info: ProcessInfo | None) -> psutil.Process | None:
        """The node's process, if it is alive and is the one we started (a
        reused pid has another start time)."""
        if info is None:
            return None
        try:
            p = psutil.Process(info.pid)
            if not started_at(p.create_time(), info.create_time):
                return None
            if p.status() == psutil.STATUS_ZOMBIE and _threads_left(info.pid) <= 1:
                return None
        except psutil.Error:
            return None
        return p

    def process_state(self, node_id: str) -> tuple[int | None, str]:
        info = self.load().processes.get(node_id)
        p = self._process(info)
        if p is None:
            return None, "down"
        try:
            stopped = p.status() == psutil.STATUS_STOPPED
        except psutil.Error:
            return None, "down"
        return p.pid, "paused" if stopped else "running"

    def running_nodes(self) -> list[str]:
        if not self.exists():
            return []
        cf = self.load()
        return [n for n, info in cf.processes.items() if self._process(info) is not None]

    def check_ports(self) -> None:
        """Refuse, naming the first one, if any node's port is taken."""
        for n in self.node_ids():
            self._check_node_ports(self.config().node(n))

    def _check_node_ports(self, spec: NodeSpec) -> None:
        udp = self.config().transport == "udp"
        if self.config().kernel_mode() == "sandbox":
            return  # the nodes' network is their own; nothing else binds there
        for port_name in ("peer_port", "client_port", "control_port"):
            port = getattr(spec, port_name)
            if not spec.host.startswith("127."):
                continue
            if port_in_use(spec.host, port, udp=udp and port_name == "peer_port"):
                raise ClusterError(
                    f"port {port} ({spec.id} {port_name}) on {spec.host} is already in use "
                    "by another program; free it or choose other ports")

    def start(self, node_id: str, force_rejoin: bool = False) -> int:
        """Start one node detached (own session); returns its pid. With
        `force_rejoin` a node that lost its data starts as a voter anyway
        (unsafe: node/membership_mark.py)."""
        with self.locked():
            cf = self.load()
            spec = cf.config.node(node_id)
            if self._process(cf.processes.get(node_id)) is not None:
                raise ClusterError(f"node {node_id} is already running "
                                   f"(pid {cf.processes[node_id].pid})")
            stray = self.orphans().get(node_id)
            if stray is not None:
                with contextlib.suppress(psutil.Error):
                    cf.processes[node_id] = ProcessInfo(stray.pid, stray.create_time())
                    self._save(cf)
                raise ClusterError(f"node {node_id} is already running (pid {stray.pid}, which "
                                   "cluster.json did not name; now it does)")
            self._check_node_ports(spec)
            ndir = private_dir(node_dir(self.run_dir, node_id))
            # The intent first, durably: if this raftctl dies after the
            # launch, the next command finds the process by its command line.
            cf.launching[node_id] = time.time()
            try:
                self._save(cf)
            except OSError as e:
                raise ClusterError(f"cannot record in {self.file} that {node_id} is starting "
                                   f"({e.strerror}); nothing was started") from None
            stdout = ndir / "stdout.log"
            with open(open_private(stdout, os.O_WRONLY | os.O_APPEND), "ab") as out:
                self._launch_offsets[node_id] = out.tell()
                try:
                    prefix = (self.kernel().exec_prefix(node_id) if cf.config.kernel_mode() else [])
                except netns.NetnsError as e:
                    raise ClusterError(str(e)) from None
                proc = subprocess.Popen(
                    [*prefix, sys.executable, "-m", "node", "--run-dir", str(self.run_dir),
                     "--id", node_id, *(["--force-rejoin"] if force_rejoin else [])],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            create_time = psutil.Process(proc.pid).create_time()
            cf.processes[node_id] = ProcessInfo(proc.pid, create_time)
            del cf.launching[node_id]
            try:
                self._save(cf)
            except OSError as e:
                # A process no file names is one nothing would ever stop.
                proc.kill()
                proc.wait(5)
                raise ClusterError(f"{node_id} was started but cannot be recorded in {self.file} "
                                   f"({e.strerror}), so it was stopped again") from None
            return proc.pid

    def exit_output(self, node_id: str) -> str:
        """What a node launched by this object wrote before it exited (a
        refusal to start says why there); empty if it was not launched here."""
        offset = self._launch_offsets.get(node_id)
        if offset is None:
            return ""
        return output_since(node_dir(self.run_dir, node_id) / "stdout.log", offset)

    def stop_orphans(self) -> list[str]:
        """SIGTERM the node processes of this run directory that cluster.json
        does not name (SIGKILL after 10 s); returns their nodes."""
        orphans = self.orphans()
        for p in orphans.values():
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGCONT)
                p.terminate()
        _gone, alive = psutil.wait_procs(list(orphans.values()), timeout=10.0)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5.0)
        return sorted(orphans)

    def signal(self, node_id: str, sig: int) -> int:
        """Send `sig` to a node's process; raises if it is not running."""
        cf = self.load()
        cf.config.node(node_id)
        p = self._process(cf.processes.get(node_id))
        if p is None:
            raise ClusterUnavailable(f"node {node_id} is not running")
        p.send_signal(sig)
        return int(p.pid)

    def kill(self, node_id: str) -> int:
        """SIGKILL, then wait until the process is gone (its threads too:
        only then are its files and sockets closed); raise if it is not
        within KILL_WAIT_S, saying what holds it."""
        pid = self.signal(node_id, signal.SIGKILL)
        self._wait_killed(node_id, pid)
        return pid

    def _wait_killed(self, node_id: str, pid: int) -> None:
        if self._wait_gone(node_id, KILL_WAIT_S):
            return
        _, state = self.process_state(node_id)
        if state == "down":
            return  # gone just after the wait
        raise NotYetExited(node_id, (
            f"node {node_id} (pid {pid}) was sent SIGKILL but has not exited within "
            f"{KILL_WAIT_S:g} s: it is {state}{self._stuck_detail(node_id, pid)}; it is not "
            "safe to start it again until it has"))

    def _stuck_detail(self, node_id: str, pid: int) -> str:
        """Why a killed process on this machine is still there, if psutil says."""
        try:
            stuck = psutil.Process(pid).status() == psutil.STATUS_DISK_SLEEP
        except psutil.Error:
            return ""
        return ", in the kernel, waiting for its disk" if stuck else ""

    def stop(self, node_id: str, timeout_s: float = 10.0) -> int:
        """SIGTERM (the node hands over leadership and flushes), then wait;
        SIGKILL if it has not exited by `timeout_s`."""
        _, state = self.process_state(node_id)
        if state == "paused":
            self.signal(node_id, signal.SIGCONT)
        pid = self.signal(node_id, signal.SIGTERM)
        if not self._wait_gone(node_id, timeout_s):
            try:
                self.signal(node_id, signal.SIGKILL)
            except ClusterUnavailable:
                return pid  # it exited just after the wait
            self._wait_killed(node_id, pid)
        return pid

    def pause(self, node_id: str) -> int:
        """SIGSTOP, and wait until the kernel shows the process stopped: the
        signal is delivered later, and a command right after must see it."""
        pid = self.signal(node_id, signal.SIGSTOP)
        self._wait_process_state(node_id, "paused", 2.0)
        return pid

    def resume(self, node_id: str) -> int:
        """SIGCONT, then push the node's recorded link rules: a fault change
        made while it was paused never reached it."""
        pid = self.signal(node_id, signal.SIGCONT)
        self._wait_process_state(node_id, "running", 2.0)
        path = node_dir(self.run_dir, node_id) / "links.json"
        rules = (msgspec.json.decode(path.read_bytes(), type=dict[str, LinkRule])
                 if path.exists() else {})
        self.control(node_id, SetLinksRequest(rules=rules))
        return pid

    def _wait_process_state(self, node_id: str, state: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.process_state(node_id)[1] != state:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def _wait_gone(self, node_id: str, timeout_s: float) -> bool:
        info = self.load().processes.get(node_id)
        deadline = time.monotonic() + timeout_s
        # A dead node stays a zombie until its parent (often init) reaps it:
        # that counts as gone.
        while self._process(info) is not None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    # --- control socket ------------------------------------------------------------

    def control(self, node_id: str, req: ControlRequest,
                timeout_s: float = CONTROL_TIMEOUT_S) -> ControlResponse | None:
        """One request to a node's control socket; None if it did not answer."""
        spec = self.config().node(node_id)
        sock = make_client_socket(self._ctx, spec.control_addr(), self.keys())
        try:
            try:
                sock.send(encode_request(req), zmq.NOBLOCK)
            except zmq.Again:
                return None
            if not sock.poll(max(1, int(timeout_s * 1000))):
                return None
            return decode_response(sock.recv())
        finally:
            sock.close(linger=0)

    def node_status(
        self, node_id: str, timeout_s: float = CONTROL_TIMEOUT_S,
        kernel_rules: dict[str, dict[str, LinkRule]] | None = None,
    ) -> NodeState:
        pid, proc = self.process_state(node_id)
        status = None
        if proc == "running":
            r = self.control(node_id, StatusRequest(), timeout_s)
            status = r.data if r is not None and r.ok else None
        if status is not None and self.config().kernel_mode():
            # The node knows only the transport's share; show all of it.
            if kernel_rules is None:
                kernel_rules = compile_rules(self.load_faults(), self.node_ids())
            status["links"] = {p: msgspec.to_builtins(r)
                               for p, r in kernel_rules[node_id].items()}
        return NodeState(node_id, pid, proc, status)

    def status(self, timeout_s: float = CONTROL_TIMEOUT_S) -> list[NodeState]:
        ids = self.node_ids()
        rules = compile_rules(self.load_faults(), ids) if self.config().kernel_mode() else None
        return [self.node_status(n, timeout_s, rules) for n in ids]

    def leader(self, states: list[NodeState] | None = None) -> str | None:
        """The leader of the highest term that a live node reports; remembered
        for the next client (`last_leader`)."""
        lead = leader_of(states if states is not None else self.status())
        if lead is not None:
            self.remember_leader(lead)
        return lead

    def wait_for_leader(self, timeout_s: float, exclude: set[str] | None = None) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            lead = self.leader()
            if lead is not None and lead not in (exclude or set()):
                return lead
            if time.monotonic() >= deadline:
                raise ClusterUnavailable(f"no leader was elected within {timeout_s:.1f}s; "
                                   "see `raftctl logs` and `raftctl status`")
            time.sleep(0.05)

    def transfer(self, to: str) -> str:
        lead = self.leader()
        if lead is None:
            raise ClusterUnavailable("there is no leader right now; try again in a moment")
        r = self.control(lead, TransferRequest(to=to))
        if r is None:
            raise ClusterUnavailable(f"leader {lead} did not answer")
        if not r.ok:
            raise ClusterError(r.message or r.error or "transfer refused")
        return lead

    def compact(self, node_id: str) -> dict[str, Any]:
        """Have a node snapshot its state machine now (written on a thread
        of the node); returns what it started."""
        r = self.control(node_id, CompactRequest())
        if r is None:
            raise ClusterError(f"node {node_id} did not answer")
        if not r.ok:
            raise ClusterError(r.message or r.error or "compaction refused")
        return r.data or {}

    def digest(self, node_id: str) -> dict[str, Any] | None:
        r = self.control(node_id, DigestRequest())
        return r.data if r is not None and r.ok else None

    def stop_all(self) -> list[str]:
        """SIGTERM every running node (resuming paused ones first), SIGKILL
        those still there after 10 s; returns the nodes that were running."""
        running = self.running_nodes()
        for n in running:
            if self.process_state(n)[1] == "paused":
                self.signal(n, signal.SIGCONT)
            self.signal(n, signal.SIGTERM)
        stuck: list[str] = []
        for n in running:
            if self._wait_gone(n, 10.0):
                continue
            try:
                pid = self.signal(n, signal.SIGKILL)
            except ClusterUnavailable:
                continue  # it exited just after the wait
            try:
                self._wait_killed(n, pid)
            except NotYetExited as e:
                stuck.append(str(e))
        if stuck:
            raise ClusterError("; ".join(stuck))
        return running

    def client_addrs(self) -> dict[str, str]:
        return {n: self.config().node(n).client_addr() for n in self.node_ids()}

    def up_client_addrs(self) -> dict[str, str]:
        """The client addresses of the nodes whose process runs (not paused),
        the leader last seen first: a client then never spends its attempt
        timeout on a node the supervisor knows cannot answer."""
        addrs = self.client_addrs()
        up = [n for n in addrs if self.process_state(n)[1] == "running"]
        lead = self.last_leader()
        if lead in up:
            up.remove(lead)
            up.insert(0, lead)
        return {n: addrs[n] for n in up}
