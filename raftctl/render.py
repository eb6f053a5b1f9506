"""Rendering for the CLI: status tables, log lines and JSON. The only place
besides `cli.py` that prints."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from raftctl.cluster import NodeState, leader_of
from raftctl.discovery import FoundCluster

if TYPE_CHECKING:  # `raftctl member` only: its module loads storage code
    from raftctl.members import Conf, Member, Outcome

NODE_COLOURS = ["cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan",
                "bright_magenta", "bright_green", "bright_yellow", "bright_blue", "bright_red"]
STATE_STYLES = {"leader": "bold green", "follower": "", "candidate": "yellow",
                "pre_candidate": "yellow", "paused": "bold magenta", "down": "bold red",
                "unreachable": "red"}
ROLE_STYLES = {"voter": "bold", "learner": "cyan", "leaving": "yellow", "removed": "dim"}
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


def disk_note(st: dict[str, Any] | None) -> str:
    """`disk low` or `disk full` (with the free space) when a node's disk
    stops its writes (node/disk.py), else nothing."""
    disk = (st or {}).get("disk") or {}
    if disk.get("state", "ok") == "ok":
        return ""
    free = disk.get("free_bytes", -1)
    return f"disk {disk['state']}" + (f" ({free // (1024 * 1024)} MiB free)" if free >= 0 else "")


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


def _lead_conf(states: list[NodeState]) -> dict[str, Any] | None:
    """The configuration the leader reports (None: no node leads)."""
    lead = leader_of(states)
    st = next((s.status for s in states if s.id == lead), None)
    return st.get("conf") if st else None


def member_role(conf: dict[str, Any] | None, node: str) -> str | None:
    """voter, learner, leaving (an old voter while joint) or none; None when
    no node leads."""
    if conf is None:
        return None
    if node in conf["voters"]:
        return "voter"
    if node in conf["learners"]:
        return "learner"
    return "leaving" if node in conf["outgoing"] else "none"


def conf_caption(conf: dict[str, Any] | None) -> str:
    """`voters n1,n2,n3 · learners n4`, and while joint the old voters."""
    if conf is None:
        return "configuration unknown (no leader)"
    parts = [f"voters {','.join(conf['voters'])}"]
    if conf["learners"]:
        parts.append(f"learners {','.join(conf['learners'])}")
    if conf["joint"]:
        parts.append(f"joint with old voters {','.join(conf['outgoing'])}")
    elif not conf["committed"]:
        parts.append("change committing")
    return " · ".join(parts)


def status_rows(states: list[NodeState]) -> list[dict[str, Any]]:
    """The stable `--json` schema of `raftctl status`."""
    rows = []
    lead_conf = _lead_conf(states)
    for s in states:
        st = s.status or {}
        rows.append({
            "node": s.id, "pid": s.pid, "state": node_state(s),
            "term": st.get("term"), "leader": st.get("leader"), "commit": st.get("commit"),
            "applied": st.get("applied"), "log_first": st.get("log_first"),
            "log_last": st.get("log_last"), "snapshot_index": st.get("snapshot_index"),
            "faults": st.get("links") or {},
            "member": member_role(lead_conf, s.id), "conf": st.get("conf"),
            "disk": (st.get("disk") or {}).get("state"),
            "unsafe_bugs": st.get("unsafe_bugs") or [],
            # A Paxos node's ballot (`term` is its number) and slots.
            **({k: st.get(k) for k in ("algorithm", "ballot", "leader_ballot", "slots")}
               if "ballot" in st else {}),
        })
    return rows


def status_table(states: list[NodeState], title: str | None = None) -> Table:
    """The status of every node. A Paxos cluster's shows each node's ballot
    (the one it promised) for the term, and its slots for the log."""
    lead_conf = _lead_conf(states)
    paxos = any(s.status and "ballot" in s.status for s in states)
    t = Table(title=title, title_justify="left", header_style="bold",
              caption=conf_caption(lead_conf), caption_justify="left")
    term_col, log_col = ("BALLOT", "SLOTS") if paxos else ("TERM", "LOG")
    for col in ("NODE", "MEMBER", "PID", "STATE", term_col, "LEADER", "COMMIT", "APPLIED",
                log_col, "FAULTS"):
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
            s.id, _s(member_role(lead_conf, s.id)), str(s.pid or "-"),
            Text(state, style=STATE_STYLES.get(state, "")),
            _s(st.get("ballot" if paxos else "term")), _s(st.get("leader")),
            _s(st.get("commit")), _s(st.get("applied")), log,
            ", ".join(x for x in (disk_note(st), faults_summary(st)) if x),
        )
    return t


def members_table(rows: list[Member], conf: Conf | None, title: str) -> Table:
    """`raftctl member list`."""
    caption = "configuration unknown (no leader)" if conf is None else conf_caption({
        "voters": conf.voters, "learners": conf.learners, "outgoing": conf.outgoing,
        "joint": conf.joint, "committed": conf.committed})
    t = Table(title=title, title_justify="left", header_style="bold", caption=caption,
              caption_justify="left")
    for col in ("NODE", "ROLE", "STATE", "PID", "BEHIND"):
        t.add_column(col, justify="right" if col in {"PID", "BEHIND"} else "left", no_wrap=True)
    for r in rows:
        t.add_row(r.node, Text(r.role, style=ROLE_STYLES.get(r.role, "")),
                  Text(r.state, style=STATE_STYLES.get(r.state, "")), _s(r.pid), _s(r.behind))
    return t


def member_outcome(o: Outcome) -> str:
    """One line saying what a `member` command did."""
    did = {"add": f"{o.node} added as a learner", "promote": f"{o.node} promoted to voter",
           "remove": f"{o.node} removed", "replace": f"{o.node} replaced by {o.joined}"}[o.action]
    extra = []
    if o.started and o.action == "add":
        extra.append(f"started {', '.join(o.started)}")
    if o.stopped:
        extra.append(f"stopped {', '.join(o.stopped)}")
    tail = f" ({'; '.join(extra)})" if extra else ""
    learners = f"; learners {','.join(o.learners)}" if o.learners else ""
    return f"{did}{tail}; voters {','.join(o.voters)}{learners}"


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


def log_line(ev: dict[str, Any], colour_of: dict[str, str],
             term_label: Callable[[Any], str] | None = None) -> Text:
    """One event as a line; `term_label` shows the term its own way (a Paxos
    cluster's lines show their term as the ballot it is, `b5.n2`)."""
    node = str(ev.get("node", "?"))
    colour = colour_of.setdefault(node, NODE_COLOURS[len(colour_of) % len(NODE_COLOURS)])
    name = str(ev.get("event", "?"))
    ts = str(ev.get("ts", ""))[11:26]
    rest = {k: v for k, v in ev.items() if k not in _HEAD_KEYS}
    text = Text()
    text.append(f"{ts} ", style="dim")
    text.append(f"{node:<4}", style=colour)
    term = term_label(ev.get("term")) if term_label else f"t{ev.get('term', '?'):<3}"
    text.append(f" {term} {ev.get('role', '')!s:<13} ", style="dim")
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
