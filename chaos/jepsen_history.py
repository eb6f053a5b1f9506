"""A recorded run's history in Jepsen's shape, for Knossos, Elle or
Porcupine to check on their own: one map a line, an invocation and a
completion for every client operation, plus the nemesis's faults, as JSON
lines and as EDN. Pure functions of the record; docs/CHAOS.md has the shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chaos.linearizability import FAIL, OK, READ, UNKNOWN
from chaos.record import RunRecord
from chaos.workload import APPEND, CAS, CLOSE_SESSION, OPEN_SESSION, READ_SET, OpRecord

NEMESIS = "nemesis"
JSONL_FILE = "history.jsonl"
EDN_FILE = "history.edn"

# Our outcomes as Jepsen's completion types: info is "may or may not have
# happened", which is what an unknown outcome is.
_TYPE = {OK: "ok", FAIL: "fail", UNKNOWN: "info"}


def _value(o: OpRecord, done: bool) -> Any:
    """Jepsen's independent-key tuple: [key, v], with [expected, new] for a
    cas, the element for an append, every element read (a vector, in order,
    duplicates kept) for a set read. A session operation's value is the
    session (nil while a registration is under way)."""
    if o.kind == OPEN_SESSION:
        return o.session if done and o.outcome == OK else None
    if o.kind == CLOSE_SESSION:
        return o.session
    if o.kind == READ_SET:
        return [o.key, o.elements if done and o.outcome == OK else None]
    if o.kind == READ:
        return [o.key, o.value if done and o.outcome == OK else None]
    if o.kind == CAS:
        return [o.key, [o.expected, o.value]]
    return [o.key, o.value]


def _extra(o: OpRecord) -> dict[str, Any]:
    """Keys beside Jepsen's own: an append's session and seq, a padded value's size."""
    out: dict[str, Any] = {}
    if o.kind == APPEND and o.session is not None:
        out.update(session=o.session, seq=o.seq)
    if o.size is not None:
        out["size"] = o.size
    return out


def history_ops(rec: RunRecord) -> list[dict[str, Any]]:
    """Every event of the run in time order, each a map with `index`,
    `type`, `f`, `value`, `process` and `time` (ns since the run began);
    failed and unknown operations add `error`. A client whose operation
    ended in info is a new process afterwards (Jepsen's rule: the old one
    may still be running)."""
    clients = list(dict.fromkeys(o.client for o in sorted(rec.ops, key=lambda o: o.invoke)))
    width = max(1, len(clients))
    process = {c: i for i, c in enumerate(clients)}
    events: list[tuple[int, int, int, dict[str, Any]]] = []
    for o in sorted(rec.ops, key=lambda o: o.invoke):
        p = process[o.client]
        extra = _extra(o)
        events.append((_ns(o.invoke_s), 1, o.invoke, {
            "type": "invoke", "f": o.kind, "value": _value(o, False), "process": p, **extra}))
        done: dict[str, Any] = {
            "type": _TYPE[o.outcome], "f": o.kind, "value": _value(o, True), "process": p,
            **extra}
        if o.error is not None:
            done["error"] = o.error
        events.append((_ns(o.complete_s), 1, o.complete, done))
        if o.outcome == UNKNOWN:
            process[o.client] = p + width
    for k, w in enumerate(rec.faults):
        value = {"targets": w.targets, "label": w.label}
        events.append((_ns(w.start_s), 0, 2 * k, {
            "type": "info", "f": f"start-{w.kind}", "value": value, "process": NEMESIS}))
        if w.end_s is not None:
            events.append((_ns(w.end_s), 0, 2 * k + 1, {
                "type": "info", "f": f"stop-{w.kind}", "value": value, "process": NEMESIS}))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    out = []
    for i, (t, _, _, ev) in enumerate(events):
        out.append({"index": i, **ev, "time": t})
    return out


def _ns(seconds: float) -> int:
    return round(seconds * 1_000_000_000)


def to_jsonl(ops: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(op, ensure_ascii=False, separators=(",", ":")) + "\n"
                   for op in ops)


def to_edn(ops: list[dict[str, Any]]) -> str:
    """One EDN map a line; `type`, `f` and the nemesis process are keywords."""
    return "".join(_edn_op(op) + "\n" for op in ops)


def _edn_op(op: dict[str, Any]) -> str:
    parts = []
    for k, v in op.items():
        if k in ("type", "f") or (k == "process" and v == NEMESIS):
            parts.append(f":{k} :{v}")
        else:
            parts.append(f":{k} {_edn(v)}")
    return "{" + ", ".join(parts) + "}"


def _edn(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") \
            .replace("\r", "\\r").replace("\t", "\\t") + '"'
    if isinstance(v, list | tuple):
        return "[" + " ".join(_edn(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f":{k} {_edn(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no EDN form for {type(v).__name__}")


def write(rec: RunRecord, out_dir: Path) -> list[Path]:
    """Write history.jsonl and history.edn into `out_dir`."""
    ops = history_ops(rec)
    paths = [out_dir / JSONL_FILE, out_dir / EDN_FILE]
    paths[0].write_text(to_jsonl(ops), encoding="utf-8")
    paths[1].write_text(to_edn(ops), encoding="utf-8")
    return paths
