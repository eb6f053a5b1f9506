"""`raftctl explain`: a sentence for every event of docs/LOGS.md, and the
sentences it tells of recorded runs (tests/data/explain/, made by
tests/data/explain/record.py): an election, a failover, a partition, a
refused vote and a split vote; its filters, --json, a run directory, and -f."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from node.logs import EVENTS
from raftctl.cli import main
from raftctl.cluster import Cluster, make_config
from raftctl.exits import Exit
from raftctl.explain import KINDS, Narrator, parse_terms
from raftctl.sentences import SAYERS, Track, say
from tests.procs import wait_until

ROOT = Path(__file__).parent.parent
DATA = ROOT / "tests" / "data" / "explain"
JSON_KEYS = {"ts", "term", "node", "kind", "event", "text", "ref", "lesson", "repeats", "until"}


def told(*args: str) -> list[dict[str, Any]]:
    """`raftctl explain --json ARGS`, one record a line."""
    r = CliRunner().invoke(main, ["explain", "--json", *args])
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.stdout.splitlines()]


def texts(*args: str) -> list[str]:
    return [rec["text"] for rec in told(*args)]


def in_order(got: list[str], *wanted: str) -> None:
    """Each of `wanted` begins one of `got`, in this order."""
    i = 0
    for w in wanted:
        while i < len(got) and not got[i].startswith(w):
            i += 1
        assert i < len(got), f"missing, or out of order: {w!r}\nin:\n" + "\n".join(got)
        i += 1


# --- every event has its sentence ------------------------------------------------------


def _documented_keys() -> dict[str, list[str]]:
    doc = (ROOT / "docs" / "LOGS.md").read_text()
    out: dict[str, list[str]] = {}
    for name, keys in re.findall(r"^\| `([a-z_]+)` \| (.*?) \|", doc, re.MULTILINE):
        if name in EVENTS:
            # Keys are the backticked words outside parentheses (which list values).
            out[name] = re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", keys))
    return out


_SAMPLES: dict[str, Any] = {
    "candidate": "n2", "leader": "n2", "to": "n2", "follower": "n2", "source": "n2",
    "handing_to": "n2", "prevote": True, "rules": {"n2": {"block_out": True, "block_in": True}},
    "reason": "log_behind", "error": "no space left on device", "detail": "short datagram",
    "file": "wal-0001", "address": "127.0.0.1", "key": "ab12cd34", "transport": "zmq",
    "fsync": "always", "peer_addr": "tcp://127.0.0.1:1", "client_addr": "tcp://127.0.0.1:2",
    "conflict_term": 2, "leases": [12, 15],
}


def test_every_event_of_the_vocabulary_has_a_sentence() -> None:
    """explain has a sentence of its own for exactly the events nodes log."""
    assert set(SAYERS) == EVENTS, (sorted(EVENTS - set(SAYERS)), sorted(set(SAYERS) - EVENTS))


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_each_documented_event_reads_as_a_sentence(event: str) -> None:
    """A line with the keys docs/LOGS.md gives the event becomes a sentence
    that names its node and leaves no key unread or unknown."""
    keys = _documented_keys()[event]
    ev: dict[str, Any] = {"ts": "2026-12-01T10:00:00.000000Z", "node": "n1", "term": 3,
                          "role": "follower", "event": event}
    ev.update({k: _SAMPLES.get(k, 7) for k in keys})
    text = say(ev, Track(["n1", "n2", "n3"])).text(with_lesson=True)
    assert "n1" in text and text[0] == "n" and "None" not in text and "?" not in text, text


def test_a_vote_line_with_both_logs_positions_names_them() -> None:
    """A vote_rejected line carrying both logs' last entries says where each
    ends, as the lesson's election restriction needs (§5.4.1)."""
    ev = {"ts": "2026-12-01T10:00:00.000000Z", "node": "n3", "term": 4, "role": "follower",
          "event": "vote_rejected", "candidate": "n2", "prevote": False, "reason": "log_behind",
          "last_term": 3, "last_index": 57, "candidate_last_term": 3,
          "candidate_last_index": 51}
    text = say(ev, Track(["n1", "n2", "n3"])).text(with_lesson=False)
    assert text == ("n3 refused n2 its vote in term 4: n2's log is behind n3's (n2's log ends "
                    "at term 3 index 51, n3's at term 3 index 57) (§5.4.1)")


# --- recorded runs ---------------------------------------------------------------------


def test_an_election() -> None:
    """A fresh cluster: a timer fires, pre-votes, a vote, a leader with 2 of 3."""
    in_order(texts("--from", str(DATA / "election")),
             "term 0: before any election",
             "n2 started: it recovered an empty log from its disk",
             "n2's election timer fired; it asked for pre-votes for term 1",
             "n1 granted n2 a pre-vote for term 1",
             "term 1",
             "n2 stood for election in term 1: its pre-vote won (n2, n1 and n3 would vote for it;"
             " a majority is 2)",
             "n1 voted for n2 in term 1",
             "n2 became leader of term 1: with 2 of 3 votes (n2 and n1; a majority is 2)",
             "the logs end at 14:29:26.804 with n2 leading term 1")


def test_a_failover() -> None:
    """The killed leader's silence ends in a new term and leader; the old
    leader comes back from its disk and follows."""
    in_order(texts("--from", str(DATA / "failover")),
             "n1 became leader of term 1",
             "n2's election timer fired; it asked for pre-votes for term 2",
             "n3 granted n2 a pre-vote for term 2",
             "term 2",
             "n2 became leader of term 2: with 2 of 3 votes (n2 and n3; a majority is 2)",
             "n1 started again: its previous run ended without a clean stop after its last line "
             "at 14:29:33.411 (killed, crashed or power lost)",
             "n1 follows n2 in term 2",
             "the logs end at 14:29:36.026 with n2 leading term 2")


def test_a_partition() -> None:
    """The cut-off leader steps down (CheckQuorum) while the majority elects
    another; it stays in its old term until the cut heals."""
    got = texts("--from", str(DATA / "partition"))
    in_order(got,
             "n1 became leader of term 1",
             "n1's links changed: cut from n2; cut from n3, by the operator",
             "n3's election timer fired; it asked for pre-votes for term 2",
             "n3 became leader of term 2: with 2 of 3 votes (n3 and n2; a majority is 2)",
             "n1's election timer fired; it asked for pre-votes for term 2",
             "n1's links were healed",
             "n1 follows n3 in term 2",
             "the logs end at 14:29:45.119 with n3 leading term 2")
    in_order(got, "n1 stopped leading term 1: it heard from no majority for a whole election "
             "timeout; a leader that cannot reach a majority")
    assert any(t.endswith("[n1 is still in term 1]") for t in got)


def test_a_refused_vote() -> None:
    """A node that missed writes asks again and again and is refused for its
    log (§5.4.1), once with the rule and then counted; after the heal the
    up-to-date node wins and repairs its log."""
    got = told("--from", str(DATA / "refused_vote"))
    in_order([r["text"] for r in got],
             "n3 started again",
             "n3's election timer fired; it asked for pre-votes for term 2",
             "n2 refused n3 a pre-vote for term 2: n3's log is behind n2's (n3's last entry is of"
             " an older term than n2's, or of the same term at a lower index); a candidate whose"
             " log is behind a voter's may lack a committed entry, so it must not lead: this is"
             " the election restriction (§5.4.1)",
             "n2 refused n3 a pre-vote for term 2, again 3 more times until 14:29:56.630",
             "n2 became leader of term 2: with 2 of 3 votes (n2 and n3; a majority is 2)",
             "the logs end at 14:29:56.895 with n2 leading term 2")
    in_order([r["text"] for r in got], "n3 refused n2's entries after index 10: its log ends at "
             "index 1, before 10")
    again = [r for r in got if r["kind"] == "again" and r["text"].startswith("n2 refused")]
    assert [(r["node"], r["repeats"], r["until"][11:23]) for r in again] == [
        ("n2", 3, "14:29:56.630")]


def test_a_split_vote() -> None:
    """Two candidates of one term, each refusing the other, end the term
    without a leader; it happens twice before one wins."""
    in_order(texts("--from", str(DATA / "split_vote")),
             "term 6",
             "n2 stood for election in term 6",
             "n3 stood for election in term 6",
             "n3 refused n2 its vote in term 6: it already voted for itself in term 6; a node "
             "votes once a term",
             "term 6 had no leader: n2 and n3 stood at nearly the same time and split the votes",
             "term 7",
             "term 7 had no leader: n2 and n3 stood",
             "term 8",
             "n2 became leader of term 8",
             "the logs end at 14:30:10.649 with n2 leading term 8")


# --- filters, --json, where the logs come from ----------------------------------------


def test_json_records_have_one_shape() -> None:
    """Every --json line has the documented keys and a known kind."""
    for rec in told("--from", str(DATA / "refused_vote")):
        assert set(rec) == JSON_KEYS and rec["kind"] in KINDS, rec


def test_a_rule_is_taught_once_then_cited() -> None:
    """One vote a term is spelt out the first time it is at work; later
    sentences cite it, and --json carries the lesson on each."""
    got = [r for r in told("--from", str(DATA / "split_vote"))
           if r["event"] == "vote_rejected" and "already voted" in r["text"]]
    assert len(got) >= 3
    assert [("votes once a term" in r["text"]) for r in got] == [True] + [False] * (
        len(got) - 1)
    assert all(r["lesson"] and "votes once a term" in r["lesson"] for r in got)


def test_node_filter_keeps_that_nodes_sentences_and_the_clusters() -> None:
    """--node n3 (or n3 as an argument) tells what n3 did, with the terms
    and the cluster's sentences, and nothing another node did."""
    for args in (["--node", "n3"], ["n3"]):
        got = told("--from", str(DATA / "split_vote"), *args)
        assert {r["node"] for r in got} == {"n3", None}, got
        assert any(r["kind"] == "no_leader" for r in got)


def test_term_filter() -> None:
    """--term 7 keeps term 7 alone; --term 6..7 both; --term 8.. from 8 on."""
    src = str(DATA / "split_vote")
    assert {r["term"] for r in told("--from", src, "--term", "7")} == {7}
    assert {r["term"] for r in told("--from", src, "--term", "6..7")} == {6, 7}
    assert {r["term"] for r in told("--from", src, "--term", "8..")} == {8}


def test_since_filter() -> None:
    """--since a time leaves out what happened before it."""
    since = "2026-12-04T14:30:10.300000Z"
    got = told("--from", str(DATA / "split_vote"), "--since", since)
    # A term's heading carries the time the term began, which may be earlier.
    assert got and all((r["until"] or r["ts"]) >= since for r in got if r["kind"] != "term")
    assert not any(r["text"].startswith("n2 stood for election in term 6") for r in got)


def test_bad_filters_are_usage_errors() -> None:
    """An unknown node, a backwards term range or a directory without logs
    exit 2 with a sentence that says what is wrong."""
    for args, says in ((["--node", "n9"], "no node is named n9 (nodes: n1, n2, n3)"),
                       (["--term", "5..3"], "not a range of terms from low to high")):
        r = CliRunner().invoke(main, ["explain", "--from", str(DATA / "election"), *args])
        assert r.exit_code == Exit.USAGE and says in r.output, r.output
    r = CliRunner().invoke(main, ["explain", "--from", str(DATA)])
    assert r.exit_code == Exit.USAGE and "holds no node logs" in r.output, r.output
    assert parse_terms("4") == (4, 4) and parse_terms("3..") == (3, None)


def test_a_clusters_run_directory_is_read_without_from(tmp_path: Path) -> None:
    """Without --from, explain reads the cluster's run directory: the same
    sentences as from the saved copy."""
    c = Cluster(tmp_path / "run", "t")
    c.create(make_config(3, name="t"))
    for log in (DATA / "failover" / "nodes").glob("*/node.log"):
        dest = c.log_path(log.parent.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, dest)
    assert texts("--from", str(DATA / "failover")) == [
        rec["text"] for rec in
        [json.loads(x) for x in CliRunner().invoke(
            main, ["--run-dir", str(c.run_dir), "explain", "--json"]).stdout.splitlines()]]


def test_follow_tells_new_lines_and_sums_up_on_ctrl_c(tmp_path: Path) -> None:
    """-f tells lines written after it started; Ctrl-C ends it with exit 0
    after it has told what the logs end with."""
    src = DATA / "failover" / "nodes"
    lines = {n: (src / n / "node.log").read_text().splitlines(keepends=True)
             for n in ("n1", "n2", "n3")}
    for n, ls in lines.items():
        (tmp_path / "nodes" / n).mkdir(parents=True)
        (tmp_path / "nodes" / n / "node.log").write_text("".join(ls[:-1] if n == "n1" else ls))
    p = subprocess.Popen([sys.executable, "-m", "raftctl", "explain", "-f", "--json",
                          "--since", "2026-01-01T00:00:00Z", "--from", str(tmp_path)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[dict[str, Any]] = []
    stdout = p.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: out.extend(
        json.loads(x) for x in iter(stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(r["text"].startswith("n1 started again") for r in out), 20.0,
                   "explain -f told n1's restart")
        assert not any(r["text"].startswith("n1 follows n2") for r in out)
        with open(tmp_path / "nodes" / "n1" / "node.log", "a") as f:
            f.write(lines["n1"][-1])
        wait_until(lambda: any(r["text"].startswith("n1 follows n2 in term 2") for r in out),
                   20.0, "explain -f told the line appended to n1's log")
        p.send_signal(signal.SIGINT)
        assert p.wait(20) == 0, p.stderr.read() if p.stderr else ""
    finally:
        p.kill()
    reader.join(5)
    assert out[-1]["kind"] == "now" and "with n2 leading term 2" in out[-1]["text"]


def test_the_narrator_needs_no_files() -> None:
    """The narrator is fed events directly, and says nothing of no events."""
    n = Narrator(["n1", "n2", "n3"])
    assert n.finish() == []
    ev = {"ts": "2026-12-01T10:00:00.000000Z", "node": "n1", "term": 1, "role": "leader",
          "event": "became_leader", "last_index": 1}
    assert [s.kind for s in n.feed(ev)] == ["term", "event"]
    assert n.finish()[-1].text.endswith("with n1 leading term 1")
