"""`report.html`: a recorded run as one self-contained page of inline SVG
(no script, no fetch): a lane per node with its role and term over time,
fault windows shaded and labelled, leader changes, client latency and
throughput, each anomaly marked with its slice of history, and a legend.
A pure function of the record and its verdict.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from html import escape
from pathlib import Path

from chaos.invariants import Violation
from chaos.linearizability import OK, UNKNOWN
from chaos.monitor import CHAOS_STATUS_POLL_MS
from chaos.record import FaultWindow, RunRecord
from chaos.report import MEANS, MISMATCH, ROWS, Verdict, bucket, fault_counts, outcome_counts
from chaos.workload import APPEND, CAS, CLOSE_SESSION, OPEN_SESSION, READ_SET, OpRecord

REPORT_FILE = "report.html"

_W = 1280  # the width of every chart, px
_LEFT = 110  # room for the lane names and the y axes
_RIGHT = 24
_LANE_H = 24
_LANE_GAP = 6
_LABEL_ROWS_H = 34  # two staggered rows of fault labels above the lanes
_CHART_H = 200
# Above this many points the page draws one in k answered operations (every
# failed and unknown one stays).
_MAX_POINTS = 20_000

ROLE_COLOURS = {
    "leader": "#2e7d32", "follower": "#90a4ae", "candidate": "#f9a825",
    "pre_candidate": "#ffe082", "noanswer": "#eceff1", "paused": "#7e57c2", "down": "#37474f",
}
_ROLE_NAMES = {
    "leader": "leader (L and its term)", "follower": "follower (F)",
    "candidate": "candidate (C)", "pre_candidate": "pre-candidate, PreVote (P)",
    "noanswer": "running, no answer to status (?)", "paused": "paused (SIGSTOP)",
    "down": "down (not running)",
}
# Fault kinds by family: each family has one colour.
FAMILIES = {
    "kill": "crash", "stop": "crash", "kill-all": "crash", "snapshot-kill": "crash",
    "pause": "pause", "isolate": "network", "partition": "network", "bridge": "network",
    "ring": "network", "one-way": "network", "netem": "netem", "transfer": "transfer",
    "power-loss": "power",
}
FAMILY_COLOURS = {"crash": "#e53935", "power": "#6d4c41", "pause": "#8e24aa",
                  "network": "#fb8c00", "netem": "#1e88e5", "transfer": "#43a047"}
_FAMILY_NAMES = {
    "crash": "crash: kill, stop (SIGTERM), kill-all, snapshot-kill",
    "power": "power loss: SIGKILL, and what the disk had not synced is gone",
    "pause": "pause (SIGSTOP)",
    "network": "network: isolate, partition, bridge, ring, one-way",
    "netem": "netem: delay, loss, duplicate, reorder", "transfer": "leadership transfer",
}
OP_COLOURS = {"ok": "#1b5e20", "fail": "#e65100", "unknown": "#6a1b9a"}
_ANOMALY = "#d50000"

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:24px;color:#212121}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
table{border-collapse:collapse} td,th{padding:3px 8px;border-bottom:1px solid #e0e0e0;
text-align:left;vertical-align:top} th{background:#fafafa}
.facts td:first-child{color:#616161}
.ok{color:#1b5e20}.failed{color:#c62828;font-weight:600}
svg{display:block;margin:4px 0 12px;font:11px system-ui,'DejaVu Sans',sans-serif}
.lane-name{font-weight:600;font-size:12px}.seg-label{fill:#fff;font-size:10px}
.seg-label.dark{fill:#263238}
.fault-label{font-size:10px}.axis{stroke:#9e9e9e}.grid{stroke:#eeeeee}
.legend{display:flex;flex-wrap:wrap;gap:6px 22px;max-width:1280px}
.legend div{display:flex;align-items:center;gap:6px}
.legend svg{display:inline;margin:0}
.anomaly{border-left:4px solid #d50000;padding:4px 12px;margin:12px 0;background:#fff8f8}
tr.culprit td{background:#ffebee;font-weight:600}
.mono{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:12px}
"""


def _x(t: float, end: float) -> float:
    return round(_LEFT + (t / end) * (_W - _LEFT - _RIGHT), 2) if end > 0 else _LEFT


def _tick_step(end: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600):
        if end / step <= 14:
            return step
    return 1200


def _x_axis(end: float, y: float, top: float) -> list[str]:
    out = [f'<line class="axis" x1="{_LEFT}" y1="{y}" x2="{_W - _RIGHT}" y2="{y}"/>']
    step = _tick_step(end)
    t = 0.0
    while t <= end + 1e-9:
        x = _x(t, end)
        out.append(f'<line class="grid" x1="{x}" y1="{top}" x2="{x}" y2="{y}"/>')
        out.append(f'<text x="{x}" y="{y + 14}" text-anchor="middle">{t:g}s</text>')
        t += step
    return out


def _fault_rects(faults: list[FaultWindow], end: float, top: float, height: float,
                 cls: str, labelled: bool) -> list[str]:
    out = []
    for i, w in enumerate(faults):
        fam = FAMILIES.get(w.kind, "network")
        x0 = _x(w.start_s, end)
        x1 = max(x0 + 2, _x(w.end_s if w.end_s is not None else end, end))
        title = escape(f"{w.kind}: {w.label} ({w.start_s:.2f}s to "
                       f"{w.end_s if w.end_s is not None else end:.2f}s; targets chosen: {w.spec}"
                       + ("; hit the leader" if w.hit_leader else "")
                       + (f"; failed: {w.error}" if w.error else "") + ")")
        ident = f' id="fault-{i + 1}"' if labelled else ""
        out.append(f'<rect class="{cls} fault-{fam}"{ident} data-kind="{escape(w.kind)}" '
                   f'x="{x0}" y="{top}" width="{round(x1 - x0, 2)}" height="{height}" '
                   f'fill="{FAMILY_COLOURS[fam]}" fill-opacity="0.22" '
                   f'stroke="{FAMILY_COLOURS[fam]}" stroke-width="1.5">'
                   f'<title>{title}</title></rect>')
        if labelled:
            y = 12 if i % 2 == 0 else 27
            text = w.kind + (" " + ",".join(w.targets) if w.targets else "")
            out.append(f'<text class="fault-label" x="{x0 + 2}" y="{y}" '
                       f'fill="{FAMILY_COLOURS[fam]}">{escape(text)}'
                       f'{" ★" if w.hit_leader else ""}<title>{title}</title></text>')
    return out


def _anomaly_marks(violations: list[Violation], end: float, top: float,
                   bottom: float, labelled: bool) -> list[str]:
    out = []
    for i, v in enumerate(violations):
        if v.t_s is None:
            continue
        x = _x(min(v.t_s, end), end)
        out.append(f'<a href="#anomaly-{i + 1}"><line class="anomaly-mark" x1="{x}" y1="{top}" '
                   f'x2="{x}" y2="{bottom}" stroke="{_ANOMALY}" stroke-width="2">'
                   f'<title>{escape(f"anomaly {i + 1}: {v.check}: {v.detail}")}</title></line>')
        if labelled:
            out.append(f'<text x="{x + 3}" y="{bottom - 3}" fill="{_ANOMALY}" '
                       f'font-weight="700">!{i + 1}</text>')
        out.append("</a>")
    return out


def _state(ns_process: str, role: str | None) -> str:
    if ns_process != "running":
        return ns_process if ns_process in ROLE_COLOURS else "down"
    if role is None:
        return "noanswer"
    return role if role in ROLE_COLOURS else "follower"


def _segments(rec: RunRecord, node: str, end: float) -> list[tuple[float, float, str, int | None]]:
    """(from, to, state, term) runs of one node's samples."""
    poll_s = CHAOS_STATUS_POLL_MS / 1000.0
    samples = sorted(rec.samples, key=lambda s: s.t)
    out: list[tuple[float, float, str, int | None]] = []
    for k, s in enumerate(samples):
        ns = s.nodes.get(node)
        if ns is None:
            continue
        state = _state(ns.process, ns.role)
        term = ns.term if state in ("leader", "follower", "candidate", "pre_candidate") else None
        t1 = samples[k + 1].t if k + 1 < len(samples) else min(end, s.t + poll_s)
        if out and out[-1][2] == state and out[-1][3] == term and abs(out[-1][1] - s.t) < 1e-9:
            out[-1] = (out[-1][0], t1, state, term)
        else:
            out.append((s.t, t1, state, term))
    return out


def _leader_changes(rec: RunRecord) -> list[tuple[float, str, int]]:
    """When a new (leader, term) first shows, the highest-term leader seen."""
    out: list[tuple[float, str, int]] = []
    shown: tuple[str, int] | None = None
    for s in sorted(rec.samples, key=lambda s: s.t):
        leaders = [(ns.term or 0, n) for n, ns in s.nodes.items() if ns.role == "leader"]
        if not leaders:
            continue
        term, node = max(leaders)
        if shown != (node, term):
            shown = (node, term)
            out.append((s.t, node, term))
    return out


def timeline_svg(rec: RunRecord, verdict: Verdict, end: float) -> str:
    lanes_top = _LABEL_ROWS_H + 4
    lanes_h = len(rec.nodes) * (_LANE_H + _LANE_GAP)
    axis_y = lanes_top + lanes_h + 2
    h = axis_y + 22
    out = [f'<svg id="timeline" width="{_W}" height="{h}" viewBox="0 0 {_W} {h}" '
           'role="img" aria-label="node roles and faults over time">']
    out += _x_axis(end, axis_y, lanes_top)
    lane_y = {}
    for k, node in enumerate(rec.nodes):
        y = lanes_top + k * (_LANE_H + _LANE_GAP)
        lane_y[node] = y
        out.append(f'<g class="lane" id="lane-{escape(node)}" data-node="{escape(node)}">')
        out.append(f'<text class="lane-name" x="{_LEFT - 8}" y="{y + _LANE_H / 2 + 4}" '
                   f'text-anchor="end">{escape(node)}</text>')
        for t0, t1, state, term in _segments(rec, node, end):
            x0, x1 = _x(t0, end), _x(t1, end)
            letter = {"leader": "L", "follower": "F", "candidate": "C",
                      "pre_candidate": "P"}.get(state, "")
            what = _ROLE_NAMES[state].split(" (")[0] + (f", term {term}" if term else "")
            out.append(f'<rect class="seg seg-{state}" x="{x0}" y="{y}" '
                       f'width="{max(0.5, round(x1 - x0, 2))}" height="{_LANE_H}" '
                       f'fill="{ROLE_COLOURS[state]}"><title>{escape(node)}: {escape(what)} '
                       f'({t0:.2f}s to {t1:.2f}s)</title></rect>')
            if letter and x1 - x0 >= 24:
                dark = "" if state in ("leader", "candidate") else " dark"
                out.append(f'<text class="seg-label{dark}" x="{round((x0 + x1) / 2, 2)}" '
                           f'y="{y + _LANE_H / 2 + 4}" text-anchor="middle">'
                           f'{letter}{term}</text>')
        out.append("</g>")
    # Over the lanes, translucent: a lane shows what the fault did to it.
    out += _fault_rects(rec.faults, end, lanes_top - 4, lanes_h + 4, "fault-band", True)
    for t, node, term in _leader_changes(rec):
        x, ly = _x(t, end), lane_y.get(node)
        if ly is None:
            continue
        out.append(f'<path class="leader-change" d="M{x - 5},{ly - 5} L{x + 5},{ly - 5} '
                   f'L{x},{ly + 3} Z" fill="#000"><title>{escape(node)} leads term {term} '
                   f'(seen at {t:.2f}s)</title></path>')
    out += _anomaly_marks(verdict.violations, end, lanes_top - 4, axis_y, True)
    out.append("</svg>")
    return "\n".join(out)


def _point(o: OpRecord, x: float, y: float) -> str:
    b = bucket(o)
    cls = "ok" if b in (OK, MISMATCH) else ("unknown" if b == UNKNOWN else "fail")
    c = OP_COLOURS[cls]
    if cls == "ok":
        return f'<circle class="op op-ok" cx="{x}" cy="{y}" r="2" fill="{c}"/>'
    title = escape(f"{o.kind} {o.key} by {o.client}: {o.outcome}"
                   + (f" ({o.error})" if o.error else ""))
    if cls == "fail":
        return (f'<rect class="op op-fail" x="{round(x - 2.5, 2)}" y="{round(y - 2.5, 2)}" '
                f'width="5" height="5" fill="{c}"><title>{title}</title></rect>')
    return (f'<path class="op op-unknown" d="M{x},{round(y - 4, 2)} L{x + 4},{y} '
            f'L{x},{round(y + 4, 2)} L{x - 4},{y} Z" fill="{c}"><title>{title}</title></path>')


def latency_svg(rec: RunRecord, verdict: Verdict, end: float) -> str:
    top, bottom = 10, _CHART_H - 24
    lat = [max(0.1, (o.complete_s - o.invoke_s) * 1000.0) for o in rec.ops]
    hi_ms = max([10.0, *lat])
    lo_ms = 0.5
    span = math.log10(hi_ms) - math.log10(lo_ms)

    def y_of(ms: float) -> float:
        return round(bottom - (math.log10(max(ms, lo_ms)) - math.log10(lo_ms)) / span
                     * (bottom - top), 2)

    out = [f'<svg id="latency" width="{_W}" height="{_CHART_H}" viewBox="0 0 {_W} {_CHART_H}" '
           'role="img" aria-label="operation latency over time">']
    out += _x_axis(end, bottom, top)
    out += _fault_rects(rec.faults, end, top, bottom - top, "fault-shade", False)
    ms = 1.0
    while ms <= hi_ms:
        y = y_of(ms)
        out.append(f'<line class="grid" x1="{_LEFT}" y1="{y}" x2="{_W - _RIGHT}" y2="{y}"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{y + 4}" text-anchor="end">{ms:g} ms</text>')
        ms *= 10
    answered = sum(1 for o in rec.ops if bucket(o) in (OK, MISMATCH))
    every = max(1, math.ceil(answered / _MAX_POINTS))
    seen = 0
    for o, ms_ in zip(rec.ops, lat, strict=True):
        if bucket(o) in (OK, MISMATCH):
            seen += 1
            if seen % every:
                continue
        out.append(_point(o, _x(o.invoke_s, end), y_of(ms_)))
    out += _anomaly_marks(verdict.violations, end, top, bottom, False)
    if every > 1:
        out.append(f'<text x="{_W - _RIGHT}" y="{top + 10}" text-anchor="end">one in {every} '
                   "answered operations shown</text>")
    out.append("</svg>")
    return "\n".join(out)


def throughput_svg(rec: RunRecord, verdict: Verdict, end: float) -> str:
    top, bottom = 10, _CHART_H - 24
    bin_s = 1.0 if end >= 20 else 0.5
    n = max(1, math.ceil(end / bin_s))
    counts = {k: [0] * n for k in OP_COLOURS}
    for o in rec.ops:
        b = bucket(o)
        k = "ok" if b in (OK, MISMATCH) else ("unknown" if b == UNKNOWN else "fail")
        counts[k][min(n - 1, int(o.complete_s / bin_s))] += 1
    # The last bin may be cut short by the end of the run.
    widths = [min(end, (i + 1) * bin_s) - i * bin_s for i in range(n)]
    rates = {k: [c / w if w > 0 else 0.0 for c, w in zip(cs, widths, strict=True)]
             for k, cs in counts.items()}
    peak = max([1.0, *(r for rs in rates.values() for r in rs)])
    out = [f'<svg id="throughput" width="{_W}" height="{_CHART_H}" '
           f'viewBox="0 0 {_W} {_CHART_H}" role="img" aria-label="operations per second">']
    out += _x_axis(end, bottom, top)
    out += _fault_rects(rec.faults, end, top, bottom - top, "fault-shade", False)
    for frac in (0.5, 1.0):
        y = round(bottom - frac * (bottom - top), 2)
        out.append(f'<line class="grid" x1="{_LEFT}" y1="{y}" x2="{_W - _RIGHT}" y2="{y}"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{y + 4}" text-anchor="end">'
                   f'{peak * frac:.0f}/s</text>')
    for k, rs in rates.items():
        pts = " ".join(f"{_x(i * bin_s + widths[i] / 2, end)},"
                       f"{round(bottom - r / peak * (bottom - top), 2)}"
                       for i, r in enumerate(rs))
        out.append(f'<polyline class="tput tput-{k}" points="{pts}" fill="none" '
                   f'stroke="{OP_COLOURS[k]}" stroke-width="1.5"/>')
    out += _anomaly_marks(verdict.violations, end, top, bottom, False)
    out.append("</svg>")
    return "\n".join(out)


def _swatch(inner: str, text: str, w: int = 22) -> str:
    return (f'<div><svg width="{w}" height="14" viewBox="0 0 {w} 14">{inner}</svg>'
            f"{escape(text)}</div>")


def legend_html() -> str:
    items = [_swatch(f'<rect width="22" height="14" fill="{c}" stroke="#9e9e9e" '
                     'stroke-width="0.5"/>', "node " + _ROLE_NAMES[r])
             for r, c in ROLE_COLOURS.items()]
    items.append(_swatch('<path d="M6,1 L16,1 L11,9 Z" fill="#000"/>',
                         "leader change: a new leader (or term) seen on that lane"))
    items += [_swatch(f'<rect width="22" height="14" fill="{c}" fill-opacity="0.16" '
                      f'stroke="{c}"/>', f"fault window, {_FAMILY_NAMES[f]}")
              for f, c in FAMILY_COLOURS.items()]
    items.append(_swatch("", "★ after a fault's label: it hit the leader", 1))
    items.append(_swatch(f'<line x1="11" y1="0" x2="11" y2="14" stroke="{_ANOMALY}" '
                         'stroke-width="2"/>', "anomaly: a failed check (click for its history)"))
    items.append(_swatch(f'<circle cx="11" cy="7" r="3" fill="{OP_COLOURS["ok"]}"/>',
                         "operation ok: answered (a cas that found another value too)"))
    items.append(_swatch(f'<rect x="8" y="4" width="6" height="6" fill="{OP_COLOURS["fail"]}"/>',
                         "operation failed: refused or unanswered, certainly no effect"))
    items.append(_swatch(f'<path d="M11,2 L16,7 L11,12 L6,7 Z" fill="{OP_COLOURS["unknown"]}"/>',
                         "operation unknown: may or may not have taken effect"))
    items += [_swatch(f'<line x1="0" y1="7" x2="22" y2="7" stroke="{c}" stroke-width="2"/>',
                      f"throughput, {k} operations completed per second")
              for k, c in OP_COLOURS.items()]
    return '<div class="legend" id="legend">' + "\n".join(items) + "</div>"


def _facts(rec: RunRecord) -> str:
    mix = ", ".join(f"{k}:{w:g}" for k, w in rec.nemesis.items())
    shares = ", ".join(f"{n} {k}" for n, k in rec.shares.items()) or rec.workload
    load = f"{rec.rate:g} operations/s in all" if rec.rate else "no rate limit"
    rows = [("seed", str(rec.seed)), ("nodes", ", ".join(rec.nodes)),
            ("workload", f"{rec.workload}: {rec.clients} clients ({shares}) on "
                         f"{len(rec.keys)} keys and {len(rec.set_keys)} sets; {load}; "
                         f"{rec.depth} writes in flight per set client; register values "
                         f"{rec.value_sizes or 'small'}"),
            ("faults", f"{rec.duration_s:g}s, each fault {rec.interval_s:g}s then "
                       f"{rec.interval_s:g}s of quiet; mix {mix}"),
            ("leader hit", f"{sum(1 for w in rec.faults if w.hit_leader)} of "
                           f"{len(rec.faults)} faults"),
            ("recovery", "none within the bound" if rec.recovery_s is None
             else f"{rec.recovery_s:.2f}s after healing")]
    rows += [("note", n) for n in rec.notes]
    return '<table class="facts">' + "".join(
        f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows) + "</table>"


def _verdict_line(verdict: Verdict) -> str:
    if verdict.ok:
        return '<p class="ok" id="verdict"><b>verdict: OK</b>, every check held</p>'
    failed = [row for row, text in verdict.checks.items() if not text.startswith("ok")]
    return (f'<p class="failed" id="verdict">verdict: {len(verdict.violations)} '
            f"VIOLATION(S): {escape(', '.join(failed))} (see the anomalies below)</p>")


def _checks_html(verdict: Verdict) -> str:
    rows = []
    for row, text in verdict.checks.items():
        good = text.startswith("ok")
        mark = '<span class="ok">✓</span>' if good else '<span class="failed">✗</span>'
        rows.append(f'<tr class="check"><td>{mark}</td><td><b>{escape(row)}</b><br>'
                    f'<small>{escape(MEANS.get(row, ""))}</small></td><td>{escape(text)}</td>'
                    "</tr>")
    return '<table class="checks">' + "".join(rows) + "</table>"


def _op_value(o: OpRecord, element: str | None) -> str:
    """What an operation wrote or read, as the slice table shows it: a set
    read as its size and how often it holds the element in question."""
    if o.kind == CAS:
        value = f"{o.expected!r} -> {o.value!r}"
    elif o.kind == READ_SET:
        elements = o.elements or []
        value = f"{len(elements)} elements" if o.outcome == OK else ""
        if element is not None and o.outcome == OK:
            value += f"; {element!r} x{elements.count(element)}"
    elif o.kind in (OPEN_SESSION, CLOSE_SESSION):
        value = f"session {o.session}" if o.session is not None else ""
    else:
        value = repr(o.value)
    if o.kind == APPEND and o.session is not None:
        sent = f", sent {o.attempts} times" if o.attempts and o.attempts > 1 else ""
        value += f" (session {o.session}, seq {o.seq}{sent})"
    if o.size is not None:
        value += f" ({o.size} bytes)"
    if o.found is not None:
        value += f" (found {o.found!r})"
    return value


def _op_rows(rec: RunRecord, positions: Iterable[int], culprit_t: float | None,
             element: str | None = None) -> str:
    rows = []
    for p in positions:
        if not 0 <= p < len(rec.ops):
            continue
        o = rec.ops[p]
        value = _op_value(o, element)
        end = "?" if o.outcome == UNKNOWN else f"{o.complete_s:.3f}"
        culprit = (culprit_t is not None and o.complete_s == culprit_t) or \
            (element is not None and o.kind == APPEND and o.value == element)
        cls = ' class="culprit"' if culprit else ""
        rows.append(f"<tr{cls}><td>{p}</td><td>{escape(o.client)}</td><td>{escape(o.kind)}</td>"
                    f"<td>{escape(o.key)}</td><td>{escape(value)}</td><td>{escape(o.outcome)}"
                    f"</td><td>{o.invoke_s:.3f}</td><td>{end}</td>"
                    f"<td>{escape(o.error or '')}</td></tr>")
    if not rows:
        return "<p><small>no client operation belongs to this finding</small></p>"
    return ('<table class="slice mono"><tr><th>#</th><th>client</th><th>f</th><th>key</th>'
            "<th>value</th><th>outcome</th><th>invoked s</th><th>completed s</th><th>error</th>"
            "</tr>" + "".join(rows) + "</table>")


def _anomalies(rec: RunRecord, verdict: Verdict) -> str:
    if not verdict.violations:
        return "<p>None: every check held.</p>"
    out = []
    for i, v in enumerate(verdict.violations):
        row = next((r for r, names in ROWS.items() if v.check in names), v.check)
        out.append(f'<section class="anomaly" id="anomaly-{i + 1}"><h3>!{i + 1} '
                   f"{escape(v.check)}" + (f" at {v.t_s:.3f}s" if v.t_s is not None else "")
                   + (f" on {escape(v.key)}" if v.key else "")
                   + (f", element {escape(v.element)}" if v.element else "") + "</h3>"
                   f"<p>{escape(v.detail)}</p><p><small>check: {escape(row)}: "
                   f"{escape(MEANS.get(row, ''))}</small></p>"
                   + _op_rows(rec, v.ops, v.t_s, v.element) + "</section>")
    return "\n".join(out)


def _faults_html(rec: RunRecord) -> str:
    counts = fault_counts(rec)
    head = ("<table><tr><th>kind</th><th>injected</th><th>hit the leader</th><th>failed</th>"
            "</tr>" + "".join(f"<tr><td>{escape(k)}</td><td>{c['injected']}</td>"
                              f"<td>{c['hit_leader']}</td><td>{c['failed']}</td></tr>"
                              for k, c in counts.items()) + "</table>")
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{w.start_s:.2f}</td><td>"
        f"{'' if w.end_s is None else f'{w.end_s:.2f}'}</td><td>{escape(w.kind)}</td>"
        f"<td>{escape(w.spec)}</td><td>{escape(w.label)}</td>"
        f"<td>{'yes' if w.hit_leader else ''}</td><td>{escape(w.error or '')}</td></tr>"
        for i, w in enumerate(rec.faults))
    return head + ("<h3>windows</h3><table><tr><th>#</th><th>from s</th><th>to s</th>"
                   "<th>kind</th><th>aimed at</th><th>what</th><th>leader hit</th>"
                   f"<th>error</th></tr>{rows}</table>")


def _ops_html(rec: RunRecord) -> str:
    cols = (OK, MISMATCH, "fail", UNKNOWN)
    return ("<table><tr><th>f</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
            + "".join(f"<tr><td>{escape(k)}</td>" + "".join(f"<td>{c[x]}</td>" for x in cols)
                      + "</tr>" for k, c in sorted(outcome_counts(rec).items())) + "</table>")


def render(rec: RunRecord, verdict: Verdict) -> str:
    """The whole page."""
    end = max(1.0, rec.end_s())
    events = "".join(f"<tr><td>{e.t:.2f}</td><td>{escape(e.kind)}</td><td>{escape(e.detail)}"
                     f"{escape(f' (failed: {e.error})' if e.error else '')}</td></tr>"
                     for e in rec.events)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>chaos run, seed {rec.seed}: "
        f"{'OK' if verdict.ok else 'VIOLATIONS'}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>chaos run, seed {rec.seed}</h1>", _facts(rec), _verdict_line(verdict),
        "<h2>timeline: node roles and terms, faults, leader changes</h2>",
        timeline_svg(rec, verdict, end),
        "<h2>client latency (by invocation time, log scale)</h2>",
        latency_svg(rec, verdict, end),
        "<h2>throughput (operations completed per second)</h2>",
        throughput_svg(rec, verdict, end),
        "<h2>legend</h2>", legend_html(),
        "<h2>checks</h2>", _checks_html(verdict),
        "<h2>anomalies</h2>", _anomalies(rec, verdict),
        "<h2>faults</h2>", _faults_html(rec),
        "<h2>operations</h2>", _ops_html(rec),
        f"<h2>events</h2><details><summary>{len(rec.events)} events</summary>"
        f"<table>{events}</table></details>",
        "</body></html>", ""])


def write(rec: RunRecord, verdict: Verdict, out_dir: Path) -> Path:
    path = out_dir / REPORT_FILE
    path.write_text(render(rec, verdict), encoding="utf-8")
    return path
