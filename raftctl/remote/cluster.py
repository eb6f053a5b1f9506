"""A cluster some of whose nodes run on other hosts: the supervisor's process,
fault and log operations on those nodes done there over SSH, the local ones
left to the base class. Nothing on a host ever reads this machine's run
directory: config, keys and link rules are copied over (mode 0600) and each
node runs from the host's own install and run directory. No printing.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from chaos.faults import FaultState, compile_rules
from node.config import ClusterConfig, node_dir
from node.transport.links import LinkRule
from raftctl.cluster import (
    DEFAULT_CLUSTER,
    Cluster,
    ClusterError,
    ClusterUnavailable,
    NodeState,
)
from raftctl.remote import clock
from raftctl.remote import kernel as hk
from raftctl.remote.install import build_wheel, install, venv_python
from raftctl.remote.inventory import HostSpec, read_hosts, save_hosts
from raftctl.remote.ssh import HostCommandFailed, HostUnreachable, SshPool, SshTarget, sh

PROCESSES_FILE = "remote.json"
HOST_KERNEL_FILE = "host_kernel.json"
# How often a wait for a remote process to stop or pause looks again.
REMOTE_POLL_S = 0.02
# How often `logs -f` copies what the remote nodes added to their logs.
LOG_MIRROR_INTERVAL_S = 0.1

# Run on the host by its virtualenv's Python: start the node in a session of
# its own (so it outlives the SSH channel), print its pid.
_LAUNCH = """\
import os, subprocess, sys
run, node, log = sys.argv[1:4]
with open(log, "ab") as out:
    p = subprocess.Popen([sys.executable, "-m", "node", "--run-dir", run, "--id", node,
                          *sys.argv[4:]], stdin=subprocess.DEVNULL, stdout=out,
                         stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                         cwd=run, env={**os.environ, "PYTHONUNBUFFERED": "1"})
print(p.pid)
"""


class RemoteProcess(msgspec.Struct, frozen=True):
    """A node process on a host: its pid, its start time in clock ticks
    since boot (/proc/PID/stat), and the boot it belongs to, so a reused pid
    or a rebooted host is never mistaken for it."""

    pid: int
    start_ticks: int
    boot_id: str


class HostKernelState(msgspec.Struct):
    """`--kernel` faults: whether they are on (kept across `down` and `up`
    until `heal`) and which hosts' kernels have netem."""

    on: bool = False
    netem: dict[str, bool] = {}


class _RunDirFile(msgspec.Struct):
    config: ClusterConfig


def _stat_fields(raw: bytes) -> list[str]:
    """/proc/PID/stat after `pid (comm) `: fields[0] is the state, [19] the
    start time in ticks."""
    return raw.decode(errors="replace").rsplit(")", 1)[-1].split()


class HostCluster(Cluster):
    """A cluster whose run directory holds an inventory (`hosts.json`)."""

    def __init__(self, run_dir: Path, name: str = DEFAULT_CLUSTER,
                 pool: SshPool | None = None) -> None:
        super().__init__(run_dir, name)
        self.pool = pool or SshPool()
        self._hosts: dict[str, HostSpec] | None = None
        self._homes: dict[SshTarget, str] = {}
        self._boot_ids: dict[SshTarget, str] = {}
        self._records_lock = threading.Lock()

    # --- the inventory and the files that record the hosts' state ------------------------

    def hosts(self) -> dict[str, HostSpec]:
        if self._hosts is None:
            self._hosts = read_hosts(self.run_dir)
        return self._hosts

    def host(self, node_id: str) -> HostSpec | None:
        return self.hosts().get(node_id)

    def create(self, cfg: ClusterConfig, hosts: dict[str, HostSpec] | None = None) -> None:
        """A new run directory for `cfg` whose nodes in `hosts` run there."""
        if self.exists():
            raise ClusterError(f"cluster {self.name} already exists in {self.run_dir}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_hosts(self.run_dir, hosts or {})
        self._hosts = dict(hosts or {})
        super().create(cfg)

    def _records(self) -> dict[str, RemoteProcess]:
        path = self.run_dir / PROCESSES_FILE
        try:
            return msgspec.json.decode(path.read_bytes(), type=dict[str, RemoteProcess])
        except FileNotFoundError:
            return {}

    def _save_records(self, recs: dict[str, RemoteProcess]) -> None:
        path = self.run_dir / PROCESSES_FILE
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(recs)))
        os.replace(tmp, path)

    def host_kernel(self) -> HostKernelState:
        path = self.run_dir / HOST_KERNEL_FILE
        try:
            return msgspec.json.decode(path.read_bytes(), type=HostKernelState)
        except FileNotFoundError:
            return HostKernelState()

    def _save_host_kernel(self, st: HostKernelState) -> None:
        path = self.run_dir / HOST_KERNEL_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(st))
        os.replace(tmp, path)

    # --- paths on a host -----------------------------------------------------------------

    async def _abs(self, t: SshTarget, path: str) -> str:
        """A remote path from the inventory, made absolute (relative paths
        and `~/` start at the login's home)."""
        if path.startswith("/"):
            return path.rstrip("/") or "/"
        if t not in self._homes:
            self._homes[t] = await self.pool.home(t)
        rel = path[2:] if path.startswith("~/") else path
        return f"{self._homes[t].rstrip('/')}/{rel.rstrip('/')}"

    async def _run_dir_of(self, h: HostSpec) -> str:
        return await self._abs(h.target(), h.run_dir(self.name))

    async def _boot_id(self, t: SshTarget) -> str:
        if t not in self._boot_ids:
            raw = await self.pool.read(t, "/proc/sys/kernel/random/boot_id", size=64)
            self._boot_ids[t] = (raw or b"").decode().strip()
        return self._boot_ids[t]

    # --- installing ----------------------------------------------------------------------

    def install(self, wheel: Path | None = None, wheelhouse: Path | None = None,
                ) -> dict[str, ClusterError]:
        """Install the project on every host at once (skipped where this
        build is there); returns, by node, the hosts where it failed."""
        w = build_wheel(self.run_dir / "wheel", wheel, wheelhouse)
        places: dict[tuple[SshTarget, str, str], list[str]] = {}
        for node, h in self.hosts().items():
            places.setdefault((h.target(), h.install_path, h.python), []).append(node)

        async def one(key: tuple[SshTarget, str, str]) -> bool:
            t, path, python = key
            return await install(self.pool, t, python, await self._abs(t, path), w)

        results = self.pool.each(places, one)
        return {n: r for key, r in results.items() if isinstance(r, ClusterError)
                for n in places[key]}

    # --- processes -----------------------------------------------------------------------

    def process_state(self, node_id: str) -> tuple[int | None, str]:
        """As the base class; a node whose host cannot be reached is
        `unreachable` (its process may run: nobody can tell)."""
        h = self.host(node_id)
        if h is None:
            return super().process_state(node_id)
        rec = self._records().get(node_id)
        if rec is None:
            return None, "down"
        try:
            state = self.pool.sync(self._remote_state(h.target(), rec))
        except HostUnreachable:
            return None, "unreachable"
        return (rec.pid if state != "down" else None), state

    async def _remote_state(self, t: SshTarget, rec: RemoteProcess) -> str:
        if await self._boot_id(t) != rec.boot_id:
            return "down"  # the host rebooted since
        raw = await self.pool.read(t, f"/proc/{rec.pid}/stat", size=4096)
        f = _stat_fields(raw) if raw else []
        if len(f) < 20 or f[19] != str(rec.start_ticks) or f[0] == "X":
            return "down"
        if f[0] == "Z":
            # As locally: a zombie whose threads are all gone has let go of its ports.
            tasks = await self.pool.run(t, sh(f"ls /proc/{rec.pid}/task 2>/dev/null | wc -l"),
                                        check=False)
            return "running" if tasks.stdout.strip() not in ("", "0", "1") else "down"
        return "paused" if f[0] in ("T", "t") else "running"

    def running_nodes(self) -> list[str]:
        if not self.exists():
            return []
        local = super().running_nodes()
        return [n for n in self.node_ids() if n in local or (
            self.host(n) is not None and self.process_state(n)[1] in ("running", "paused"))]

    def unreachable_nodes(self) -> list[str]:
        return [n for n in self.hosts() if self.process_state(n)[1] == "unreachable"]

    def start(self, node_id: str, force_rejoin: bool = False) -> int:
        h = self.host(node_id)
        if h is None:
            return super().start(node_id, force_rejoin)
        with self.locked():
            cfg = self.load().config
            pid, state = self.process_state(node_id)
            if state in ("running", "paused"):
                raise ClusterError(f"node {node_id} is already running (pid {pid} on "
                                   f"{h.address})")
            rec = self.pool.sync(self._start_remote(node_id, h, cfg, force_rejoin))
            with self._records_lock:
                recs = self._records()
                recs[node_id] = rec
                self._save_records(recs)
            return rec.pid

    async def _start_remote(self, node: str, h: HostSpec, cfg: ClusterConfig,
                            force_rejoin: bool) -> RemoteProcess:
        t, q = h.target(), shlex.quote
        run = await self._run_dir_of(h)
        ndir = f"{run}/nodes/{node}"
        vpy = venv_python(await self._abs(t, h.install_path))
        await self.pool.run(t, sh(
            f"[ -x {q(vpy)} ] || {{ echo 'raftctl is not installed in {h.install_path}; "
            f"`raftctl up` installs it' >&2; exit 1; }}; umask 077; mkdir -p {q(ndir)}/data "
            f"&& chmod 700 {q(run)} && rm -f {q(ndir)}/links.json"))
        await self.pool.write(t, f"{run}/cluster.json",
                              msgspec.json.encode(_RunDirFile(config=cfg)))
        await self.pool.write(t, f"{run}/keys", (self.run_dir / "keys").read_bytes())
        links = node_dir(self.run_dir, node) / "links.json"
        if links.exists():
            await self.pool.write(t, f"{ndir}/links.json", links.read_bytes())
        extra = " --force-rejoin" if force_rejoin else ""
        out = await self.pool.run(t, sh(f"cd {q(run)} && {q(vpy)} -c {q(_LAUNCH)} {q(run)} "
                                        f"{q(node)} {q(ndir + '/stdout.log')}{extra}"))
        pid = int(out.stdout.split()[-1])
        raw = await self.pool.read(t, f"/proc/{pid}/stat", size=4096)
        f = _stat_fields(raw) if raw else []
        if len(f) < 20 or f[0] in ("Z", "X"):
            raise ClusterError(f"node {node} exited right after starting on {h.address}; "
                               f"see {ndir}/stdout.log there")
        return RemoteProcess(pid, int(f[19]), await self._boot_id(t))

    def signal(self, node_id: str, sig: int) -> int:
        h = self.host(node_id)
        if h is None:
            return super().signal(node_id, sig)
        rec = self._records().get(node_id)
        if rec is None:
            raise ClusterUnavailable(f"node {node_id} is not running")
        # Checked and signalled in one command: the pid is ours (same boot,
        # same start time) at the moment of the kill.
        script = (f'[ "$(cat /proc/sys/kernel/random/boot_id)" = {shlex.quote(rec.boot_id)} ] '
                  f'&& set -- $(sed "s/^.*) //" /proc/{rec.pid}/stat 2>/dev/null) '
                  f'&& [ "${{20:-}}" = {rec.start_ticks} ] || exit 3; '
                  f"kill -s {signal.Signals(sig).name[3:]} {rec.pid}")
        r = self.pool.sync(self.pool.run(h.target(), sh(script), check=False))
        if r.exit_status == 3:
            raise ClusterUnavailable(f"node {node_id} is not running")
        if r.exit_status != 0:
            raise HostCommandFailed(f"{h.target().label()}: kill of {node_id} failed: "
                                    f"{r.stderr.strip()}")
        return rec.pid

    def _stuck_detail(self, node_id: str, pid: int) -> str:
        # A pid on another host: this machine's psutil knows nothing of it.
        return super()._stuck_detail(node_id, pid) if self.host(node_id) is None else ""

    def _wait_gone(self, node_id: str, timeout_s: float) -> bool:
        if self.host(node_id) is None:
            return super()._wait_gone(node_id, timeout_s)
        return self._wait_process_state(node_id, "down", timeout_s, REMOTE_POLL_S)

    def _wait_process_state(self, node_id: str, state: str, timeout_s: float,
                            interval_s: float = 0.005) -> bool:
        deadline = time.monotonic() + timeout_s
        while (now := self.process_state(node_id)[1]) != state:
            if now == "unreachable" or time.monotonic() >= deadline:
                return False
            time.sleep(interval_s)  # polling cadence; the condition is the state
        return True

    def stop_all(self) -> list[str]:
        """As the base class on every node that can be reached; then, if a
        host could not be, its kernel faults are cleared where possible and
        the nodes on it are reported (they may still run)."""
        unreachable = self.unreachable_nodes()
        stopped = super().stop_all()
        if unreachable:
            self.teardown_kernel()
            raise ClusterUnavailable(
                f"stopped {', '.join(stopped) or 'nothing'}; the host of "
                f"{', '.join(unreachable)} cannot be reached ({self._reach_error(unreachable[0])}) "
                "so its node may still run: `raftctl down` again once it can be reached")
        return stopped

    def _reach_error(self, node_id: str) -> str:
        h = self.host(node_id)
        assert h is not None
        try:
            self.pool.sync(self.pool.conn(h.target()))
        except HostUnreachable as e:
            return str(e)
        return "it answers again now"

    def purge(self) -> None:
        """Also delete each host's run directory; nothing here is deleted
        while a host cannot be reached, so a later purge can finish."""
        if self.running_nodes():
            raise ClusterError(f"cluster {self.name} is running; `raftctl down` first")
        dirs: dict[SshTarget, set[str]] = {}
        for h in self.hosts().values():
            dirs.setdefault(h.target(), set()).add(h.run_dir(self.name))

        async def remove(t: SshTarget) -> None:
            paths = [shlex.quote(await self._abs(t, p)) for p in sorted(dirs[t])]
            await self.pool.run(t, sh(f"rm -rf {' '.join(paths)}"))

        failed = {t: e for t, e in self.pool.each(dirs, remove).items()
                  if isinstance(e, ClusterError)}
        if failed:
            raise ClusterUnavailable(
                "the run directory is kept, as these hosts' could not be removed: "
                + "; ".join(str(e) for e in failed.values()))
        super().purge()

    # --- faults in the hosts' kernels -----------------------------------------------------

    def enable_kernel_faults(self) -> None:
        """Turn on `--kernel`: check that every host can take the rules (root,
        iptables), note which have netem. Kept until `heal`."""
        st = self.host_kernel()
        if st.on:
            return
        local = [n for n in self.node_ids() if self.host(n) is None]
        if local:
            raise ClusterError(f"--kernel puts the rules on the nodes' hosts, and "
                               f"{', '.join(local)} run on this machine; give every node a "
                               "[hosts] table, or leave out --kernel")
        cfg = self.config()
        if cfg.transport == "zmq":
            seen: dict[str, str] = {}
            for n in cfg.nodes:
                if n.host in seen:
                    raise ClusterError(
                        f"--kernel cannot tell {seen[n.host]} and {n.id} apart: they share "
                        f"{n.host}, and over TCP the sending port is not theirs to match; "
                        "give them addresses of their own (or use --transport udp)")
                seen[n.host] = n.id
        probe = ("command -v iptables-restore >/dev/null || { echo 'has no iptables "
                 "(Debian: iptables)' >&2; exit 1; }; iptables -S INPUT >/dev/null 2>&1 || "
                 "{ echo 'does not let this user change iptables (needs root or "
                 f"CAP_NET_ADMIN)' >&2; exit 1; }}; {hk.NETEM_PROBE}")

        async def check(t: SshTarget) -> bool:
            return (await self.pool.run(t, sh(probe))).stdout.strip() == "yes"

        results = self.pool.each({h.target() for h in self.hosts().values()}, check)
        errors = [str(r) for r in results.values() if isinstance(r, ClusterError)]
        if errors:
            raise ClusterError("--kernel cannot be used: " + "; ".join(errors))
        self._save_host_kernel(HostKernelState(
            on=True, netem={t.label(): bool(r) for t, r in results.items()}))

    def _netem_on(self, st: HostKernelState, node_id: str) -> bool:
        h = self.host(node_id)
        return h is not None and st.netem.get(h.target().label(), False)

    def apply_faults(self, state: FaultState) -> list[str]:
        """As the base class; with `--kernel` on, cuts and loss (and, where
        there is netem, delay and the rest) go to the hosts' kernels, and
        `heal` takes them away and turns `--kernel` off."""
        if state.is_clear():
            clock.reset(self)
        st = self.host_kernel()
        if not st.on:
            return super().apply_faults(state)
        with self.locked():
            nodes = self.node_ids()
            path = self.run_dir / "faults.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state)))
            os.replace(tmp, path)
            rules = compile_rules(state, nodes)
            self._kernel_rules(st, rules)
            transport = {n: {p: r for p, r in ((p, hk.transport_part(r, self._netem_on(st, n)))
                                               for p, r in rules[n].items()) if r != LinkRule()}
                         for n in nodes}
            if state.is_clear():
                self._clear_kernel()
                self._save_host_kernel(HostKernelState())
            return [n for n in nodes if not self.set_links(n, transport[n])]

    def _kernel_rules(self, st: HostKernelState, rules: dict[str, dict[str, LinkRule]]) -> None:
        cfg = self.config()
        chain = hk.chain_name(self.run_dir)
        by_target: dict[SshTarget, list[str]] = {}
        for n, h in self.hosts().items():
            by_target.setdefault(h.target(), []).append(n)
        peers = [n.host for n in cfg.nodes]

        async def one(t: SshTarget) -> None:
            mine = by_target[t]
            lines = hk.input_rules(chain, rules, cfg.nodes, mine, cfg.transport == "udp")
            await self.pool.run(t, sh(hk.iptables_script(chain)),
                                stdin=hk.restore_input(chain, lines))
            if st.netem.get(t.label()):
                others = [a for a in peers if a not in {self.config().node(m).host
                                                         for m in mine}]
                await self.pool.run(t, sh(hk.netem_clear_script(others)
                                          + hk.netem_script(rules, cfg.nodes, mine)))

        failed = [str(e) for e in self.pool.each(by_target, one).values()
                  if isinstance(e, ClusterError)]
        if failed:
            raise ClusterError("kernel faults could not be set everywhere: " + "; ".join(failed))

    def _clear_kernel(self) -> list[str]:
        """Remove this cluster's chain (and netem) from every host that can
        be reached; returns the hosts cleared."""
        st = self.host_kernel()
        chain = hk.chain_name(self.run_dir)
        peers = [n.host for n in self.config().nodes]

        async def one(t: SshTarget) -> str:
            script = hk.teardown_script(chain)
            if st.netem.get(t.label()):
                script += "\n" + hk.netem_clear_script(peers)
            await self.pool.run(t, sh(script))
            return t.label()

        return [r for r in self.pool.each({h.target() for h in self.hosts().values()},
                                          one).values() if isinstance(r, str)]

    def teardown_kernel(self) -> list[str]:
        """As the base class, the hosts' kernel faults (`--kernel` stays on:
        `up` puts the recorded faults back) and any clock skew."""
        removed = super().teardown_kernel()
        if self.exists():
            removed += [f"clock skew on {h}" for h in clock.reset(self)]
        if self.exists() and self.host_kernel().on:
            removed += [f"iptables chain on {h}" for h in self._clear_kernel()]
        return removed

    def prepare_kernel(self) -> None:
        """As the base class, and with `--kernel` on, the recorded faults back
        on the hosts before any node starts."""
        super().prepare_kernel()
        if self.host_kernel().on:
            self.apply_faults(self.load_faults())

    def node_status(self, node_id: str, timeout_s: float = 1.0,
                    kernel_rules: dict[str, dict[str, LinkRule]] | None = None) -> NodeState:
        s = super().node_status(node_id, timeout_s, kernel_rules)
        if s.status is not None and self.host_kernel().on:
            rules = compile_rules(self.load_faults(), self.node_ids())
            s.status["links"] = {p: msgspec.to_builtins(r) for p, r in rules[node_id].items()}
        return s

    # --- clocks (raftctl/remote/clock.py) -------------------------------------------------

    def clock_unavailable(self) -> str | None:
        return clock.unavailable(self)

    def skew_clock(self, node_id: str, offset_s: float) -> None:
        clock.skew(self, node_id, offset_s)

    # --- logs ----------------------------------------------------------------------------

    def fetch_logs(self, nodes: list[str]) -> dict[str, str]:
        """Bring each remote node's log up to date in its local copy (the
        path `log_path` gives); returns why, by node, where that failed."""
        remote = [n for n in nodes if self.host(n) is not None]

        async def mirror(node: str) -> None:
            h = self.host(node)
            assert h is not None
            t = h.target()
            path = f"{await self._run_dir_of(h)}/nodes/{node}/node.log"
            local = self.log_path(node)
            local.parent.mkdir(parents=True, exist_ok=True)
            have = local.stat().st_size if local.exists() else 0
            size = await self.pool.size(t, path)
            if size is None:
                return
            if size < have:  # the remote log started over (a purge): so does the copy
                local.write_bytes(b"")
                have = 0
            with open(local, "ab") as f:
                while have < size:
                    chunk = await self.pool.read(t, path, offset=have)
                    if not chunk:
                        break
                    f.write(chunk)
                    have += len(chunk)

        return {n: str(r) for n, r in self.pool.each(remote, mirror).items()
                if isinstance(r, ClusterError)}

    @contextlib.contextmanager
    def mirrored_logs(self, nodes: list[str], follow: bool) -> Iterator[dict[str, str]]:
        """The remote logs copied here now and, with `follow`, kept copied
        until the block ends; yields the first copy's failures by node."""
        problems = self.fetch_logs(nodes)
        if not follow:
            yield problems
            return
        done = threading.Event()

        def keep() -> None:
            while not done.wait(LOG_MIRROR_INTERVAL_S):
                self.fetch_logs(nodes)

        th = threading.Thread(target=keep, name="log-mirror", daemon=True)
        th.start()
        try:
            yield problems
        finally:
            done.set()
            th.join()
