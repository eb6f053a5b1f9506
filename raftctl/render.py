"""Rendering for the CLI: status tables, log lines and JSON. The only place
besides `cli.py` that prints."""

from __future__ import annotations

import json
import os
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from raftctl.cluster import NodeState
from raftctl.discovery import FoundCluster

NODE_COLOURS = ["cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan",
                "bright_magenta", "bright_green", "bright_yellow", "bright_blue", "bright_red"]
STATE_STYLES = {"leader": "bold green", "follower": "", "candidate": "yellow",
                "pre_candidate": "yellow", "paused": "bold magenta", "down": "bold red",
                "unreachable": "red"}
HIGHLIGHT_EVENTS = {"became_leader": "bold green", "stepped_down": "bold red",
                    "election_started": "yellow", "prevote_started": "yellow",
                    "node_started": "bold", "node_stopping": "bold", "snapshot_installed": "cyan",
                    "leadership_transferred": "bold green", "link_faults_set": "magenta",
                    "auth_rejected": "red", "bad_message": "red", "wal_tail_truncated": "red",
                    "unsafe_bugs_enabled": "bold red"}


def node_state(s: NodeState) -> str:
    if s.process == "down":
        return "down"
    if s.process == "paused":
        return "paused"
    if s.status is None:
        return "unreachable"
    return str(s.status["role"])


def faults_summary(st: dict[str, Any] | None) -> str:
    if not st or not st.get("links"):
        return ""
    parts = []
    for peer, rule in sorted(st["links"].items()):
        kinds = []
        if rule.get("block_out") and rule.get("block_in"):
            kinds.append("cut")
        elif rule.get("block_out"):
            kinds.append("block->")
        elif rule.get("block_in"):
            kinds.append("block<-")
        if rule.get("loss"):
            kinds.append(f"loss {rule['loss'] * 100:g}%")
        if rule.get("delay_ms"):
            kinds.append(f"delay {rule['delay_ms']:g}ms")
        if rule.get("duplicate"):
            kinds.append(f"dup {rule['duplicate'] * 100:g}%")
        if rule.get("reorder"):
            kinds.append(f"reorder {rule['reorder'] * 100:g}%")
        if kinds:
            parts.append(f"{peer}: {' '.join(kinds)}")
    return ", ".join(parts)


def status_rows(states: list[NodeState]) -> list[dict[str, Any]]:
    """The stable `--json` schema of `raftctl status`."""
    rows = []
    for s in states:
        st = s.status or {}
        rows.append({
            "node": s.id, "pid": s.pid, "state": node_state(s),
            "term": st.get("term"), "leader": st.get("leader"), "commit": st.get("commit"),
            "applied": st.get("applied"), "log_first": st.get("log_first"),
            "log_last": st.get("log_last"), "snapshot_index": st.get("snapshot_index"),
            "faults": st.get("links") or {},
            "unsafe_bugs": st.get("unsafe_bugs") or [],
        })
    return rows


def status_table(states: list[NodeState], title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in ("NODE", "PID", "STATE", "TERM", "LEADER", "COMMIT", "APPLIED", "LOG", "FAULTS"):
        t.add_column(col, justify="right" if col in {"PID", "TERM", "COMMIT", "APPLIED"}
                     else "left", no_wrap=col != "FAULTS")
    for s in states:
        st = s.status or {}
        state = node_state(s)
        log = ""
        if st:
            log = f"{st['log_first']}..{st['log_last']}"
            if st.get("snapshot_index"):
                log += f" snap {st['snapshot_index']}"
        t.add_row(
            s.id, str(s.pid or "-"), Text(state, style=STATE_STYLES.get(state, "")),
            _s(st.get("term")), _s(st.get("leader")), _s(st.get("commit")),
            _s(st.get("applied")), log, faults_summary(st),
        )
    return t


def _s(v: Any) -> str:
    return "-" if v is None else str(v)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def dumps_line(obj: Any) -> str:
    """One JSON document on one line, for streams (`watch --json`)."""
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def clusters_table(found: list[FoundCluster]) -> Table:
    """`raftctl ls`: the current cluster (the one a command would act on) starred."""
    t = Table(header_style="bold", box=None)
    for col in ("", "NAME", "RUN DIR", "NODES UP", "LEADER"):
        t.add_column(col, no_wrap=True)
    for f in found:
        nodes = f"problem: {f.problem}" if f.problem else f"{f.up}/{f.nodes}"
        t.add_row("*" if f.current else "", f.name, f.run_dir, nodes, f.leader or "-")
    return t


_HEAD_KEYS = frozenset({"ts", "node", "event", "level", "term", "role"})


def log_line(ev: dict[str, Any], colour_of: dict[str, str]) -> Text:
    node = str(ev.get("node", "?"))
    colour = colour_of.setdefault(node, NODE_COLOURS[len(colour_of) % len(NODE_COLOURS)])
    name = str(ev.get("event", "?"))
    ts = str(ev.get("ts", ""))[11:26]
    rest = {k: v for k, v in ev.items() if k not in _HEAD_KEYS}
    text = Text()
    text.append(f"{ts} ", style="dim")
    text.append(f"{node:<4}", style=colour)
    text.append(f" t{ev.get('term', '?'):<3} {ev.get('role', '')!s:<13} ", style="dim")
    text.append(name, style=HIGHLIGHT_EVENTS.get(name, ""))
    if rest:
        text.append(" " + " ".join(f"{k}={_compact(v)}" for k, v in rest.items()))
    return text


def _compact(v: Any) -> str:
    return json.dumps(v, separators=(",", ":")) if isinstance(v, dict | list) else str(v)


def console(stderr: bool = False) -> Console:
    con = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        # Piped output: rich would assume 80 columns and wrap the tables.
        con = Console(stderr=stderr, highlight=False, soft_wrap=True, width=160)
    return con
