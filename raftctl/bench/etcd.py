"""etcd beside raftctl, for `raftctl bench write|read --against etcd`: find
an etcd cluster (or start one on this machine), and run the same closed-loop
load on it through its JSON gateway (the v3 API over HTTP/1.1: POST
/v3/kv/put and /v3/kv/range, linearizable by default), in the same client
shapes as raftctl/bench/shapes.py, so that one run prints the ratio.

Shapes on etcd: `per-connection` is one thread per client, each with its own
keep-alive HTTP connection, one request at a time (as node/client.py's
Client is); `pipelined` is one asyncio loop with a task and a connection per
client (HTTP/1.1 has one request in flight per connection, so this is what
an asyncio application gets from the gateway). Writes go to etcd's leader,
as raftctl's clients go to theirs; reads spread over the endpoints with
`--nodes all`. Everything here measures; nothing prints.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import psutil

from raftctl.bench.loadgen import LoadError, LoadResult, LoadSpec
from raftctl.bench.shapes import Draw, count_outcome, run_tasks, run_threads
from raftctl.clusterfile import free_ports

# Starting a local etcd cluster: every member healthy, one leader, by then.
ETCD_START_TIMEOUT_MS = 20_000
ETCD_STOP_TIMEOUT_MS = 5_000
ETCD_REQUEST_TIMEOUT_MS = 5_000  # one HTTP request; a write unanswered then is unknown
ETCD_POLL_MS = 50


class EtcdInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An etcd cluster as found: its client endpoints (host:port), version,
    leader endpoint, and the pids of its members on this machine (for their
    CPU time; empty for members elsewhere)."""

    endpoints: list[str]
    version: str
    leader: str
    pids: list[int]
    started_here: bool


def parse_against(text: str) -> list[str] | None:
    """`etcd` (None: start one here) or `etcd=HOST:PORT[,HOST:PORT...]`."""
    system, _, rest = text.partition("=")
    if system != "etcd":
        raise LoadError(f"--against {text!r}: only etcd is supported "
                        "(etcd, or etcd=HOST:PORT[,HOST:PORT...])")
    if not rest:
        return None
    eps = [e.strip() for e in rest.split(",") if e.strip()]
    for e in eps:
        host, _, port = e.rpartition(":")
        if not host or not port.isdigit():
            raise LoadError(f"--against: {e!r} is not HOST:PORT (etcd's client address)")
    return eps


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _post(endpoint: str, path: str, body: dict[str, Any],
          timeout_s: float = ETCD_REQUEST_TIMEOUT_MS / 1000) -> dict[str, Any]:
    host, port = _split(endpoint)
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise LoadError(f"etcd at {endpoint} answered {path} with HTTP {resp.status}: "
                            f"{data[:200]!r}")
        out: dict[str, Any] = json.loads(data)
        return out
    finally:
        conn.close()


def _listening_pid(endpoint: str) -> int | None:
    """The pid of the local process listening on a loopback endpoint."""
    host, port = _split(endpoint)
    if not host.startswith("127.") and host not in ("localhost", "::1"):
        return None
    with contextlib.suppress(psutil.Error):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port \
                    and c.pid is not None:
                return int(c.pid)
    return None


def probe(endpoints: list[str], started_here: bool = False,
          pids: list[int] | None = None) -> EtcdInfo:
    """Ask every endpoint for its status; the leader is the member whose id
    the others name as leader."""
    by_member: dict[str, str] = {}
    leader_ids: set[str] = set()
    version = ""
    for ep in endpoints:
        try:
            st = _post(ep, "/v3/maintenance/status", {})
        except (OSError, ValueError) as e:
            raise LoadError(f"etcd at {ep} did not answer its status ({e}); is it up, and is "
                            "that its client address?") from None
        by_member[str(st.get("header", {}).get("member_id"))] = ep
        leader_ids.add(str(st.get("leader", "0")))
        version = str(st.get("version", "?"))
    leaders = [by_member[m] for m in leader_ids if m in by_member]
    if len(leaders) != 1:
        raise LoadError("etcd has no single leader among the endpoints given "
                        f"({', '.join(endpoints)}); give every member's client address")
    found = pids if pids is not None else [p for p in map(_listening_pid, endpoints) if p]
    return EtcdInfo(endpoints=endpoints, version=version, leader=leaders[0], pids=found,
                    started_here=started_here)


@contextlib.contextmanager
def local_etcd(nodes: int, base: Path) -> Iterator[EtcdInfo]:
    """A fresh etcd cluster of `nodes` members on free loopback ports, its
    data and logs under `base`, stopped (each member by its pid) on exit.
    etcd's defaults otherwise: fsync on, 100 ms heartbeats."""
    exe = shutil.which("etcd")
    if exe is None:
        raise LoadError("--against etcd needs the etcd binary on PATH (Debian: etcd-server), "
                        "or the address of a running cluster: --against etcd=HOST:PORT")
    ports = free_ports(2 * nodes)
    names = [f"e{i + 1}" for i in range(nodes)]
    peer = {n: f"http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names)}
    client = {n: f"127.0.0.1:{ports[2 * i]}" for i, n in enumerate(names)}
    initial = ",".join(f"{n}={u}" for n, u in peer.items())
    procs: list[subprocess.Popen[bytes]] = []
    eps = list(client.values())
    found: EtcdInfo | None = None
    try:
        for n in names:
            d = base / n
            d.mkdir(parents=True, exist_ok=True)
            with open(d / "etcd.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [exe, "--name", n, "--data-dir", str(d / "data"),
                     "--listen-client-urls", f"http://{client[n]}",
                     "--advertise-client-urls", f"http://{client[n]}",
                     "--listen-peer-urls", peer[n], "--initial-advertise-peer-urls", peer[n],
                     "--initial-cluster", initial, "--initial-cluster-state", "new",
                     "--initial-cluster-token", f"raftctl-bench-{os.getpid()}"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + ETCD_START_TIMEOUT_MS / 1000
        last = "no member answered"
        while True:
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                raise LoadError(f"a local etcd member exited with {dead[0].returncode} while "
                                f"starting; its log is under {base}")
            try:
                found = probe(eps, started_here=True, pids=[p.pid for p in procs])
                break
            except LoadError as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise LoadError(f"the local etcd cluster did not elect a leader within "
                                f"{ETCD_START_TIMEOUT_MS / 1000:.0f} s: {last}")
            time.sleep(ETCD_POLL_MS / 1000)  # polling the members' status, with a deadline
        yield found
    finally:
        # The followers first: a leader stopped hands its leadership to a
        # connected peer and waits for it, seconds if that peer is stopping
        # too; with no peer left it stops at once.
        leader = eps.index(found.leader) if found is not None else -1
        _stop([p for i, p in enumerate(procs) if i != leader])
        _stop(procs)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(ETCD_STOP_TIMEOUT_MS / 1000)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


class _Requests:
    """The bodies of one client's operations, encoded once where they repeat."""

    def __init__(self, value: bytes) -> None:
        self.value = _b64(value)

    def body(self, key: str, is_write: bool) -> tuple[str, bytes]:
        if is_write:
            return "/v3/kv/put", json.dumps({"key": _b64(key), "value": self.value}).encode()
        return "/v3/kv/range", json.dumps({"key": _b64(key)}).encode()


def _target(info: EtcdInfo, spec: LoadSpec, i: int, is_write: bool) -> str:
    if is_write or spec.read_nodes == "leader":
        return info.leader
    return info.endpoints[i % len(info.endpoints)]


class CpuOf:
    """CPU seconds of a set of processes between start() and stop()."""

    def __init__(self, pids: list[int]) -> None:
        self._procs: list[tuple[psutil.Process, float]] = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                t = p.cpu_times()
                self._procs.append((p, t.user + t.system))

    def stop(self) -> float | None:
        """The sum over the processes; None if any of them went away."""
        total = 0.0
        for p, before in self._procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                return None
            total += t.user + t.system - before
        return total if self._procs else None


class _HttpClient:
    """One thread's keep-alive connections to etcd's members."""

    def __init__(self, info: EtcdInfo, spec: LoadSpec, i: int, value: bytes) -> None:
        self.info, self.spec, self.i = info, spec, i
        self.reqs = _Requests(value)
        self.conns: dict[str, http.client.HTTPConnection] = {}

    def op(self, key: str, is_write: bool) -> tuple[str | None, str | None]:
        path, body = self.reqs.body(key, is_write)
        ep = _target(self.info, self.spec, self.i, is_write)
        c = self.conns.get(ep)
        if c is None:
            c = self.conns[ep] = http.client.HTTPConnection(*_split(ep),
                                                            timeout=self.spec.op_timeout_s)
        try:
            c.request("POST", path, body, {"Content-Type": "application/json"})
            resp = c.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            self.conns.pop(ep).close()
            return ("unknown" if is_write else "timeout"), None
        if resp.status != 200:
            return f"http_{resp.status}", None
        return None, ep if self.spec.read_nodes == "all" else None

    def close(self) -> None:
        for c in self.conns.values():
            c.close()


def run_per_connection(info: EtcdInfo, spec: LoadSpec, *,
                       on_progress: Callable[[int], None] | None = None
                       ) -> tuple[LoadResult, float | None]:
    """`spec.clients` threads, each with its own connections to etcd, one
    request at a time, for `spec.duration_s`. Returns the outcomes and the
    etcd members' CPU seconds (None when not known)."""
    cpu: list[CpuOf] = []
    res = run_threads(spec, lambda i, value: _HttpClient(info, spec, i, value),
                      on_start=lambda: cpu.append(CpuOf(info.pids)), on_progress=on_progress)
    return res, cpu[0].stop()


def run_pipelined(info: EtcdInfo, spec: LoadSpec, *,
                  on_progress: Callable[[int], None] | None = None
                  ) -> tuple[LoadResult, float | None]:
    """One asyncio loop, a task and a keep-alive connection per client."""
    return asyncio.run(_pipelined(info, spec, on_progress))


class _Conn:
    """One HTTP/1.1 keep-alive connection, one request at a time: the part of
    HTTP the gateway's answers use (Content-Length or chunked bodies)."""

    def __init__(self, endpoint: str) -> None:
        self.host, self.port = _split(endpoint)
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.w is None:
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
        assert self.r is not None
        self.w.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await self.r.readline()
        parts = status_line.split()
        if len(parts) < 2:
            raise ConnectionError("the connection closed")
        length, chunked = 0, False
        while (line := await self.r.readline()) not in (b"\r\n", b"\n", b""):
            name, _, val = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(val)
            elif name == "transfer-encoding" and "chunked" in val.lower():
                chunked = True
        if chunked:
            while (size := int((await self.r.readline()).split(b";")[0], 16)) > 0:
                await self.r.readexactly(size + 2)
            await self.r.readline()
        else:
            await self.r.readexactly(length)
        return int(parts[1])

    def close(self) -> None:
        if self.w is not None:
            self.w.close()
        self.r = self.w = None


async def _pipelined(info: EtcdInfo, spec: LoadSpec,
                     on_progress: Callable[[int], None] | None
                     ) -> tuple[LoadResult, float | None]:
    res = LoadResult()
    draw = Draw(spec, spec.seed)
    reqs = _Requests(draw.value)

    async def one(i: int, end: float) -> None:
        conns: dict[str, _Conn] = {}
        try:
            while time.monotonic() < end:
                key, is_write = draw.next()
                path, body = reqs.body(key, is_write)
                ep = _target(info, spec, i, is_write)
                c = conns.setdefault(ep, _Conn(ep))
                started = time.monotonic()
                failure: str | None = None
                try:
                    status = await asyncio.wait_for(c.post(path, body), spec.op_timeout_s)
                    if status != 200:
                        failure = f"http_{status}"
                except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
                    c.close()
                    failure = "unknown" if is_write else "timeout"
                count_outcome(res, is_write, started, failure,
                              ep if spec.read_nodes == "all" else None)
        finally:
            for c in conns.values():
                c.close()

    cpu = CpuOf(info.pids)
    await run_tasks(spec, res, one, on_progress)
    return res, cpu.stop()


def etcd_key_count(info: EtcdInfo, prefix: str) -> int:
    """How many keys under `prefix` etcd holds (a linearizable count)."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    got = _post(info.leader, "/v3/kv/range",
                {"key": _b64(prefix), "range_end": _b64(end), "count_only": True})
    return int(got.get("count", 0))
