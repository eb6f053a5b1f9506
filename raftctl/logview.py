"""Reading the nodes' JSON log files: merged in time order, filtered, and
followed live like `tail -f` (a node restarted meanwhile appends to the same
file, so following it needs nothing special). No printing here.
"""

from __future__ import annotations

import collections
import datetime as dt
import heapq
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")


def parse_duration_s(text: str) -> float:
    """'30s', '5m', '250ms', '1h' -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration like 250ms, 30s, 5m or 1h")
    n, unit = float(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


@dataclass
class LogFilter:
    nodes: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)
    since_ts: str | None = None  # ISO UTC, compared as text (same format everywhere)

    def keep(self, ev: dict[str, Any]) -> bool:
        if self.nodes and ev.get("node") not in self.nodes:
            return False
        if self.events and ev.get("event") not in self.events:
            return False
        return not (self.since_ts and str(ev.get("ts", "")) < self.since_ts)


def node_logs(run_dir: Path) -> dict[str, Path]:
    """Each node's log file in a run directory, or in a copy of one that
    holds only `nodes/NODE/node.log`, by node id."""
    return {p.parent.name: p for p in sorted((run_dir / "nodes").glob("*/node.log"))}


def since_ts(seconds: float) -> str:
    """`seconds` ago, in the logs' time format."""
    t = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    return _iso(t)


def now_ts() -> str:
    """Now, in the logs' time format (ISO 8601 UTC, microseconds)."""
    return _iso(dt.datetime.now(dt.UTC))


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_since(text: str) -> str:
    """`--since`: a duration back from now (30s, 5m) or a point in time
    (2026-11-28T19:46:41Z; local time without a zone), as the logs' ISO UTC."""
    try:
        return since_ts(parse_duration_s(text))
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration like 30s or 5m nor a time like "
                         "2026-11-28T19:46:41Z") from None
    return _iso(t if t.tzinfo else t.astimezone())


def _parse(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        ev = json.loads(line)
    except json.JSONDecodeError:
        return None
    return ev if isinstance(ev, dict) else None


def complete_size(path: Path) -> int:
    """Bytes of `path` up to the end of its last complete line (0 if it is
    missing): where reading the past stops and following begins, so a line
    a node is writing right now is neither cut nor shown twice."""
    try:
        with open(path, "rb") as f:
            pos = f.seek(0, 2)
            while pos > 0:
                step = min(64 * 1024, pos)
                f.seek(pos - step)
                nl = f.read(step).rfind(b"\n")
                if nl >= 0:
                    return pos - step + nl + 1
                pos -= step
            return 0
    except FileNotFoundError:
        return 0


def _read_lines(path: Path, limit: int | None) -> Iterator[tuple[str, str]]:
    try:
        with open(path, "rb") as f:
            done = 0
            for bline in f:
                done += len(bline)
                if limit is not None and done > limit:
                    return
                line = bline.decode("utf-8", errors="replace")
                ev = _parse(line)
                if ev is not None:
                    yield str(ev.get("ts", "")), line.rstrip("\n")
    except FileNotFoundError:
        return


def merged(paths: list[Path], flt: LogFilter,
           limits: dict[Path, int] | None = None) -> Iterator[tuple[dict[str, Any], str]]:
    """Every kept event of every file (of each, only its first `limits[path]`
    bytes if given), in time order: (event, raw line)."""
    files = [_read_lines(p, None if limits is None else limits.get(p, 0)) for p in paths]
    for _, raw in heapq.merge(*files, key=lambda x: x[0]):
        ev = _parse(raw)
        if ev is not None and flt.keep(ev):
            yield ev, raw


def last(events: Iterator[tuple[dict[str, Any], str]],
         n: int | None) -> Iterator[tuple[dict[str, Any], str]]:
    """The last `n` of `events` (all of them if `n` is None)."""
    return events if n is None else iter(collections.deque(events, maxlen=n))


class Follower:
    """Tail several growing files from the given byte offsets; each poll
    returns new complete lines of all of them, sorted by timestamp."""

    def __init__(self, offsets: dict[Path, int]) -> None:
        self._pos = dict(offsets)
        self._partial: dict[Path, bytes] = {p: b"" for p in offsets}

    def poll(self) -> list[tuple[dict[str, Any], str]]:
        out: list[tuple[dict[str, Any], str]] = []
        for p, pos in self._pos.items():
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                continue
            if size < pos:  # truncated or replaced: start over
                pos = 0
                self._partial[p] = b""
            if size == pos:
                continue
            with open(p, "rb") as f:
                f.seek(pos)
                chunk = f.read()
                self._pos[p] = f.tell()
            lines = (self._partial[p] + chunk).split(b"\n")
            self._partial[p] = lines.pop()
            for bline in lines:
                line = bline.decode("utf-8", errors="replace")
                ev = _parse(line)
                if ev is not None:
                    out.append((ev, line))
        out.sort(key=lambda x: str(x[0].get("ts", "")))
        return out


def follow(
    offsets: dict[Path, int], flt: LogFilter, emit: Callable[[dict[str, Any], str], None],
    stop: Callable[[], bool], interval_s: float = 0.1, hold_s: float = 0.3,
) -> None:
    """Emit events written after `offsets` as they come, until `stop()` is
    true. Lines are held back `hold_s` so that a line another node wrote a
    moment earlier, but which reached its file later, is still shown before it."""
    f = Follower(offsets)
    held: list[tuple[str, int, dict[str, Any], str]] = []
    n = 0
    while True:
        stopping = stop()
        for ev, raw in f.poll():
            if flt.keep(ev):
                n += 1
                heapq.heappush(held, (str(ev.get("ts", "")), n, ev, raw))
        cutoff = since_ts(hold_s)
        while held and (stopping or held[0][0] <= cutoff):
            _, _, ev, raw = heapq.heappop(held)
            emit(ev, raw)
        if stopping:
            return
        time.sleep(interval_s)  # polling cadence of the tail, not synchronisation
