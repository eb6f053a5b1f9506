"""What a recorded run turns into: the verdict's history slices, the
history in Jepsen's shape (JSON lines and EDN), report.html's structure,
`raftctl chaos report` on a saved run, and the page in a real headless
Chromium (skipped, saying why, where Chromium is not installed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from chaos import html_report, jepsen_history, record
from chaos.checks import LINEARIZABLE, lost_writes
from chaos.report import judge
from raftctl import chaos_cmd
from tests.chaos_runs import KEY, NODES, recorded_run

# --- the verdict's slices ------------------------------------------------------------


def test_a_stale_read_is_reported_with_the_ops_that_prove_it() -> None:
    """The planted stale read fails linearizable on its key, at its time, with
    a slice that holds it, the write it saw and the write it missed, and not
    much more."""
    rec = recorded_run(planted=True)
    v = judge(rec)
    assert not v.ok
    (lin,) = [x for x in v.violations if x.check == LINEARIZABLE]
    assert lin.key == KEY and lin.t_s == 6.66
    sliced = [rec.ops[i] for i in lin.ops]
    stale = next(o for o in sliced if o.kind == "read" and o.complete_s == 6.66)
    assert stale.value == "c1-31"
    assert {"c1-31", "c1-32"} <= {o.value for o in sliced if o.kind == "write"}
    assert len(lin.ops) <= 12 < len(rec.ops)


def test_a_clean_record_passes_every_check() -> None:
    """The hand-made run without the plant is linearizable and keeps every invariant."""
    v = judge(recorded_run())
    assert v.ok, v.violations
    assert all(text.startswith("ok") for text in v.checks.values())


def test_a_lost_write_names_it_and_the_write_that_replaced_it() -> None:
    """The slice of a lost write holds it, the write whose value survived and the final read."""
    rec = recorded_run()
    final = rec.ops[-1]
    final.value = "c1-40"
    (lost, *_) = lost_writes(rec.ops, [KEY])
    values = {rec.ops[i].value for i in lost.ops}
    assert {"c1-40", "c1-41"} <= values and final.client in {rec.ops[i].client for i in lost.ops}


# --- the history in Jepsen's shape ------------------------------------------------------


def _edn(text: str) -> Any:
    """Just enough of an EDN reader for a history line: maps, vectors,
    strings, integers, nil, keywords (read as strings)."""
    tokens = re.findall(r'"(?:\\.|[^"\\])*"|[{}\[\]]|[^\s,{}\[\]]+', text)
    pos = 0

    def read() -> Any:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok in ("{", "["):
            items = []
            while tokens[pos] not in ("}", "]"):
                items.append(read())
            pos += 1
            if tok == "[":
                return items
            return {items[i]: items[i + 1] for i in range(0, len(items), 2)}
        if tok.startswith('"'):
            return json.loads(tok)
        if tok == "nil":
            return None
        if tok.startswith(":"):
            return tok[1:]
        return int(tok)

    out = read()
    assert pos == len(tokens), f"trailing tokens in {text!r}"
    return out


def test_history_lines_have_jepsens_shape(tmp_path: Path) -> None:
    """One map a line with index, type, f, value, process and time; every
    invocation is completed later by the same process; times never go back."""
    rec = recorded_run()
    jepsen_history.write(rec, tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == list(range(len(lines)))
    times = [x["time"] for x in lines]
    assert times == sorted(times) and times[0] >= 0
    open_: dict[Any, dict[str, Any]] = {}
    for x in lines:
        assert {"type", "f", "value", "process", "time"} <= set(x)
        if x["process"] == jepsen_history.NEMESIS:
            assert x["type"] == "info" and x["f"].split("-", 1)[0] in ("start", "stop")
            continue
        assert x["f"] in ("read", "write", "cas") and x["value"][0] in (KEY, "recovery")
        if x["type"] == "invoke":
            assert x["process"] not in open_, "a process has one operation at a time"
            open_[x["process"]] = x
        else:
            assert x["type"] in ("ok", "fail", "info")
            inv = open_.pop(x["process"])
            assert inv["f"] == x["f"]
    assert not open_
    assert len(lines) == 2 * len(rec.ops) + 2 * len(rec.faults)


def test_an_unknown_outcome_is_info_and_retires_its_process() -> None:
    """After an info completion the client continues as a new process."""
    lines = jepsen_history.history_ops(recorded_run())
    info = next(x for x in lines if x["type"] == "info" and x["process"] != "nemesis")
    later = [x for x in lines if x["index"] > info["index"] and x["f"] == "write"
             and x["process"] != "nemesis"]
    assert info["error"] == "timeout"
    assert later and all(x["process"] != info["process"] for x in later)
    assert later[0]["process"] == info["process"] + 4  # c1, c2, recovery and final


def test_edn_lines_carry_the_same_history(tmp_path: Path) -> None:
    """history.edn holds the same maps as history.jsonl, with keywords for type and f."""
    rec = recorded_run()
    jepsen_history.write(rec, tmp_path)
    edn = (tmp_path / "history.edn").read_text().splitlines()
    js = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(edn) == len(js)
    for e, j in zip(edn, js, strict=True):
        assert re.search(r":type :(invoke|ok|fail|info)\b", e) and re.search(r":f :[a-z-]+", e)
        assert _edn(e) == json.loads(j)


# --- the page's structure ---------------------------------------------------------------


class _Elements(HTMLParser):
    """Counts elements by class and collects ids, as a DOM would hold them."""

    def __init__(self) -> None:
        super().__init__()
        self.classes: dict[str, int] = {}
        self.ids: set[str] = set()
        self.tags: dict[str, int] = {}
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for k, v in attrs:
            if k == "class" and v:
                for c in v.split():
                    self.classes[c] = self.classes.get(c, 0) + 1
            if k == "id" and v:
                self.ids.add(v)
            if k in ("href", "src") and v and not v.startswith("#"):
                self.urls.append(v)


def _parse(page: str) -> _Elements:
    p = _Elements()
    p.feed(page)
    return p


def test_the_page_has_a_lane_per_node_and_a_band_per_fault() -> None:
    """One lane per node, one labelled band per fault, leader changes, the
    three charts and the legend; nothing is fetched from anywhere."""
    rec = recorded_run()
    page = _parse(html_report.render(rec, judge(rec)))
    assert page.classes["lane"] == len(NODES)
    assert {f"lane-{n}" for n in NODES} <= page.ids
    assert page.classes["fault-band"] == len(rec.faults)
    assert {f"fault-{i + 1}" for i in range(len(rec.faults))} <= page.ids
    assert page.classes["fault-label"] == len(rec.faults)
    assert page.classes["leader-change"] == 2  # n1 in term 1, n2 in term 2
    assert {"timeline", "latency", "throughput", "legend", "verdict"} <= page.ids
    assert page.classes["op-ok"] + page.classes["op-fail"] + page.classes["op-unknown"] \
        == len(rec.ops)
    assert page.classes["op-unknown"] == 1
    assert "script" not in page.tags and page.urls == []
    assert "anomaly-mark" not in page.classes


def test_each_anomaly_is_marked_on_every_chart_and_shown_with_its_slice() -> None:
    """A failed check draws a mark on the three charts linking to its section,
    which shows the check, the detail and the history slice."""
    rec = recorded_run(planted=True)
    v = judge(rec)
    text = html_report.render(rec, v)
    page = _parse(text)
    assert page.classes["anomaly-mark"] == 3 * len(v.violations)
    assert page.classes["anomaly"] == len(v.violations) and "anomaly-1" in page.ids
    assert page.classes["culprit"] == 1
    assert "c1-31" in text and "VIOLATION" in text


# --- `raftctl chaos report` ---------------------------------------------------------------


def test_report_redraws_a_saved_run(tmp_path: Path) -> None:
    """From record.json alone: the page, the history files, the verdict, the
    text timeline with its legend, and exit code 1 for the planted anomaly."""
    record.save(recorded_run(planted=True), tmp_path)
    r = CliRunner().invoke(chaos_cmd.chaos, ["report", str(tmp_path)])
    assert r.exit_code == 1, r.output
    assert "legend:" in r.output and "L7 leader of term 7" in r.output
    assert "linearizable" in r.output and "VIOLATION" in r.output
    for name in ("report.html", "history.jsonl", "history.edn", "verdict.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["ok"] is False and verdict["violations"][0]["key"] == KEY


def test_report_of_a_clean_run_exits_0_with_json(tmp_path: Path) -> None:
    """--json prints the summary with the verdict and where the files are."""
    record.save(recorded_run(), tmp_path)
    r = CliRunner().invoke(chaos_cmd.chaos, ["report", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["verdict"]["ok"] and doc["out_dir"] == str(tmp_path)
    assert doc["faults"]["kill"] == {"injected": 1, "hit_leader": 1, "failed": 0}


def test_report_of_a_directory_without_a_run_says_so(tmp_path: Path) -> None:
    """A directory that no run wrote gets one clear line and exit code 1."""
    r = CliRunner().invoke(chaos_cmd.chaos, ["report", str(tmp_path)])
    assert r.exit_code == 1
    assert "record.json" in r.output and len(r.output.strip().splitlines()) == 1


# --- in a real browser -------------------------------------------------------------------

_CHROMIUM = shutil.which("chromium")
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Chromium with a fresh profile; its whole process group is ended
    if it outlives the deadline."""
    assert _CHROMIUM is not None
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    proc = subprocess.Popen([_CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=tmp_path)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.skipif(_CHROMIUM is None, reason="chromium is not installed (.ci/run installs "
                    "it: apt-get install chromium)")
def test_the_page_in_headless_chromium(tmp_path: Path) -> None:
    """Chromium loads the page without a console error, its DOM has one
    lane per node and one band per fault, and a screenshot is taken."""
    rec = recorded_run(planted=True)
    page = html_report.write(rec, judge(rec), tmp_path)
    url = page.resolve().as_uri()
    dom = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    errors = [x for x in dom.stderr.splitlines() if "CONSOLE" in x or "Uncaught" in x]
    assert errors == [], errors
    elements = _parse(dom.stdout)
    assert elements.classes.get("lane") == len(NODES), dom.stdout[:500]
    assert elements.classes.get("fault-band") == len(rec.faults)
    assert elements.classes.get("anomaly") == 1
    shot = tmp_path / "report.png"
    r = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,900", url)
    assert r.returncode == 0, r.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 900)
