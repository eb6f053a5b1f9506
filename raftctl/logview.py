"""Reading the nodes' JSON log files: merged in time order, filtered, and
followed live like `tail -f` (a node restarted meanwhile appends to the same
file, so following it needs nothing special). No printing here.
"""

from __future__ import annotations

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


def since_ts(seconds: float) -> str:
    t = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    return t.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        ev = json.loads(line)
    except json.JSONDecodeError:
        return None
    return ev if isinstance(ev, dict) else None


def _read_lines(path: Path) -> Iterator[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                ev = _parse(line)
                if ev is not None:
                    yield str(ev.get("ts", "")), line.rstrip("\n")
    except FileNotFoundError:
        return


def merged(paths: list[Path], flt: LogFilter) -> Iterator[tuple[dict[str, Any], str]]:
    """Every kept event of every file, in time order: (event, raw line)."""
    for _, raw in heapq.merge(*(_read_lines(p) for p in paths), key=lambda x: x[0]):
        ev = _parse(raw)
        if ev is not None and flt.keep(ev):
            yield ev, raw


class Follower:
    """Tail several growing files; each poll returns new complete lines of all
    of them, sorted by timestamp."""

    def __init__(self, paths: list[Path], from_end: bool) -> None:
        self._pos: dict[Path, int] = {}
        self._partial: dict[Path, str] = {}
        for p in paths:
            self._pos[p] = p.stat().st_size if from_end and p.exists() else 0
            self._partial[p] = ""

    def poll(self) -> list[tuple[dict[str, Any], str]]:
        out: list[tuple[dict[str, Any], str]] = []
        for p, pos in self._pos.items():
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                continue
            if size < pos:  # truncated or replaced: start over
                pos = 0
                self._partial[p] = ""
            if size == pos:
                continue
            with open(p, encoding="utf-8", errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                self._pos[p] = f.tell()
            text = self._partial[p] + chunk
            lines = text.split("\n")
            self._partial[p] = lines.pop()
            for line in lines:
                ev = _parse(line)
                if ev is not None:
                    out.append((ev, line))
        out.sort(key=lambda x: str(x[0].get("ts", "")))
        return out


def follow(
    paths: list[Path], flt: LogFilter, emit: Callable[[dict[str, Any], str], None],
    stop: Callable[[], bool], interval_s: float = 0.1, from_end: bool = True,
    hold_s: float = 0.3,
) -> None:
    """Emit new events as they are written until `stop()` is true. Lines are
    held back `hold_s` so that a line another node wrote a moment earlier,
    but which reached its file later, is still shown before it."""
    f = Follower(paths, from_end)
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
