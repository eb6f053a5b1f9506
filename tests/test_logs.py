"""The log vocabulary is fixed: every event the code logs is in
`node.logs.EVENTS`, and docs/LOGS.md documents exactly that set."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from node.logs import EVENTS, make_logger

ROOT = Path(__file__).parent.parent
_LOGGED = re.compile(
    r'(?:_event|_log_bad|\.(?:info|warning|error|debug))\(\s*"([a-z_]+)"', re.MULTILINE)


def _logged_names() -> set[str]:
    names: set[str] = set()
    for pkg in ("node", "raftctl"):
        for path in (ROOT / pkg).rglob("*.py"):
            names |= set(_LOGGED.findall(path.read_text()))
    return names


def test_every_logged_event_is_in_the_vocabulary() -> None:
    """No code logs an event name outside EVENTS."""
    unknown = _logged_names() - EVENTS
    assert not unknown, f"events logged but not in node/logs.py EVENTS: {sorted(unknown)}"


def test_docs_list_exactly_the_vocabulary() -> None:
    """docs/LOGS.md has one row per event of EVENTS, and no other."""
    doc = (ROOT / "docs" / "LOGS.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", doc, re.MULTILINE))
    documented -= {"ts", "level", "node", "term", "role", "event"}
    assert documented == EVENTS, (sorted(documented - EVENTS), sorted(EVENTS - documented))


def test_a_line_carries_the_common_keys_first() -> None:
    """Each line is one JSON object starting with ts, level, node, term, role, event."""
    out = io.StringIO()
    log = make_logger(out, "n1", lambda: (7, "leader"))
    log.info("became_leader", last_index=3)
    line = json.loads(out.getvalue())
    assert list(line)[:6] == ["ts", "level", "node", "term", "role", "event"]
    assert line["term"] == 7 and line["role"] == "leader" and line["last_index"] == 3
    assert line["ts"].endswith("Z") and len(line["ts"].split(".")[1]) == 7  # microseconds
