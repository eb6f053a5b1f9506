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


def test_the_rate_limiter_admits_one_line_a_second_per_source_and_counts_the_rest() -> None:
    """Within an interval a source gets one line; the next admitted line
    says how many were left out; sources are limited independently."""
    from node.logs import RateLimiter

    now = [100.0]
    lim = RateLimiter(interval_s=1.0, clock=lambda: now[0])
    assert lim.admit("a") == 0
    assert [lim.admit("a") for _ in range(500)] == [None] * 500
    assert lim.admit("b") == 0, "another source is not held back by the first"
    now[0] += 1.0
    assert lim.admit("a") == 500
    assert lim.admit("a") is None


def test_repeating_events_are_rate_limited() -> None:
    """Every event that one source can repeat many times a second, including
    auth_rejected per address, goes through the limiter."""
    from node.logs import RATE_LIMITED_EVENTS

    for event, key in {"auth_rejected": "address", "bad_request": None, "bad_message": "source",
                       "bad_datagram": "reason", "append_rejected": "leader",
                       "message_oversize": "to", "snapshot_failed": None,
                       "forwarded_reads_dropped": "reason"}.items():
        assert RATE_LIMITED_EVENTS.get(event, "missing") == key, event
