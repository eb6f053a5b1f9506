"""docs/TUTORIAL.md, run: every ```sh block of each section, in order, against
scratch clusters in a temporary RAFTCTL_HOME, each checked against the comment
that follows it (the convention is at the end of the page). One test a
section, so that a failure names the section; every node process the blocks
started is ended by its pid, pass or fail."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psutil
import pytest

from node.config import ClusterConfig
from raftctl.cluster import ClusterFile, free_ports

ROOT = Path(__file__).parent.parent
TUTORIAL = ROOT / "docs" / "TUTORIAL.md"
BLOCK_TIMEOUT_S = 60.0

_FENCE = re.compile(r"^```(\w*)\s*$")
_EXPECT = re.compile(r"^<!-- expect: (.*) -->\s*$")
_NEEDS = re.compile(r"^<!-- needs: ([a-z_]+) -->\s*$")
_NEEDS_PROGRAM = re.compile(r"^<!-- needs program: ([a-z0-9_-]+) -->\s*$")
_CLAUSE = re.compile(
    r'^(?:exit (?P<exit>\d+(?:\|\d+)*)'
    r'|(?P<stream>out|err) (?P<op>has|lacks) "(?P<text>[^"]*)"'
    r'|out matches /(?P<regex>.*)/'
    r'|out count "(?P<ctext>[^"]*)" >= (?P<n>\d+)'
    r'|within (?P<within>\d+(?:\.\d+)?)s'
    r'|interrupt after (?P<interrupt>\d+(?:\.\d+)?)s'
    r'|check (?P<check>[a-z_]+))$')


@dataclass
class Expect:
    """What must hold after a block ran (docs/TUTORIAL.md, last section)."""

    exits: set[int] = field(default_factory=lambda: {0})
    has: list[tuple[str, str]] = field(default_factory=list)  # (stream, text)
    lacks: list[tuple[str, str]] = field(default_factory=list)
    matches: list[str] = field(default_factory=list)
    counts: list[tuple[str, int]] = field(default_factory=list)
    within_s: float = 0.0
    interrupt_s: float = 0.0
    checks: list[str] = field(default_factory=list)
    text: str = "exit 0"


@dataclass
class Block:
    code: str
    line: int
    expect: Expect = field(default_factory=Expect)


@dataclass
class Section:
    title: str
    needs: list[str] = field(default_factory=list)
    programs: list[str] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def parse_expect(text: str) -> Expect:
    e = Expect(text=text)
    for clause in (c.strip() for c in text.split(";")):
        m = _CLAUSE.match(clause)
        if m is None:
            raise ValueError(f"unknown expectation {clause!r}")
        if m["exit"]:
            e.exits = {int(x) for x in m["exit"].split("|")}
        elif m["op"] == "has":
            e.has.append((m["stream"], m["text"]))
        elif m["op"] == "lacks":
            e.lacks.append((m["stream"], m["text"]))
        elif m["regex"] is not None:
            e.matches.append(m["regex"])
        elif m["ctext"] is not None:
            e.counts.append((m["ctext"], int(m["n"])))
        elif m["within"]:
            e.within_s = float(m["within"])
        elif m["interrupt"]:
            e.interrupt_s = float(m["interrupt"])
        else:
            e.checks.append(m["check"])
    return e


def parse_tutorial(text: str) -> list[Section]:
    """The `## ` sections of the page and their ```sh blocks, each with the
    expectation comment right after it."""
    sections: list[Section] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            sections.append(Section(line[3:].strip()))
        elif (m := _NEEDS.match(line)) and sections:
            sections[-1].needs.append(m[1])
        elif (m := _NEEDS_PROGRAM.match(line)) and sections:
            sections[-1].programs.append(m[1])
        elif (m := _FENCE.match(line)) is not None:
            lang, start = m[1], i
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            if lang == "sh" and sections:
                block = Block("\n".join(lines[start + 1 : i]), start + 1)
                if i + 1 < len(lines) and (e := _EXPECT.match(lines[i + 1])):
                    block.expect = parse_expect(e[1])
                sections[-1].blocks.append(block)
        i += 1
    return sections


SECTIONS = parse_tutorial(TUTORIAL.read_text())


# --- checks a string clause cannot say --------------------------------------------------


def _number(pattern: str, outs: list[str], what: str) -> float:
    """The number `pattern` captures in the latest output that has it."""
    for text in reversed(outs):
        if m := re.search(pattern, text):
            return float(m[1].replace(",", ""))
    raise AssertionError(f"no {what} in the section's outputs")


def write_costs_more_than_a_local_sync(outs: list[str]) -> None:
    """The price section: one client's write through Raft takes longer than
    one local write+fdatasync on the same disk."""
    p50_ms = _number(r"(?s) 1 (?:[\w-]+ )?clients,.*latency p50 / p90 / p99\s*\S\s*([\d.]+) /",
                     outs, "one client's write p50")
    sync_us = _number(r"raw write\+fdatasync of 4096 B: \S+ \(([\d.]+) us each\)", outs,
                      "local sync time")
    assert p50_ms * 1000 > sync_us, f"a write took {p50_ms} ms, a local sync {sync_us} us"


def batching_multiplies_throughput(outs: list[str]) -> None:
    """64 clients get more than twice the writes per second of one client."""
    rate = r"(?s) {n} (?:[\w-]+ )?clients,.*operations/s\s*\S\s*([\d,]+)"
    one = _number(rate.format(n=1), outs, "one client's operations/s")
    many = _number(rate.format(n=64), outs, "64 clients' operations/s")
    assert many > 2 * one, f"64 clients: {many}/s, one client: {one}/s"


def lock_tokens_grow(outs: list[str]) -> None:
    """The lock's holders, in the order they held it (each printed while
    holding), got strictly growing fencing tokens."""
    tokens = [int(t) for t in re.findall(r"holds token (\d+)", outs[-1])]
    assert len(tokens) >= 3, f"{len(tokens)} holders printed a token"
    assert tokens == sorted(set(tokens)), f"tokens in holding order: {tokens}"


CHECKS: dict[str, Callable[[list[str]], None]] = {
    "lock_tokens_grow": lock_tokens_grow,
    "write_costs_more_than_a_local_sync": write_costs_more_than_a_local_sync,
    "batching_multiplies_throughput": batching_multiplies_throughput,
}


# --- running a section -------------------------------------------------------------------


@dataclass
class Ran:
    code: int
    out: str
    err: str


class Scratch:
    """A temporary RAFTCTL_HOME, a `raftctl` on PATH that runs this checkout,
    and the pids of every node process started under it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.home.mkdir()
        shim = tmp / "bin" / "raftctl"
        shim.parent.mkdir()
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m raftctl "$@"\n')
        shim.chmod(0o755)
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAFTCTL_RUN_DIR", "RAFTCTL_CLUSTER", "RAFTCTL_DEBUG")}
        env.update(RAFTCTL_HOME=str(self.home), PATH=f"{shim.parent}:{env.get('PATH', '')}",
                   PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
        self.env = env
        self.pids: set[tuple[int, float]] = set()

    def command(self, code: str) -> str:
        """`code` with each cluster file of configs/ replaced by a copy on
        free ports: the page's files name fixed ports, a test may not."""
        def copy(m: re.Match[str]) -> str:
            text = (ROOT / m[0]).read_text()
            ports = iter(free_ports(len(re.findall(r"_port = \d+", text))))
            dest = self.tmp / m[0]
            dest.parent.mkdir(exist_ok=True)
            dest.write_text(re.sub(r"(_port = )\d+", lambda p: f"{p[1]}{next(ports)}", text))
            return str(dest)
        return re.sub(r"configs/[\w.-]+\.toml", copy, code)

    def run(self, code: str, interrupt_s: float) -> Ran:
        p = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", self.command(code)],
                             cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            if interrupt_s:
                try:
                    p.wait(interrupt_s)
                    out, err = p.communicate()
                    return Ran(-1, out, f"ended by itself before Ctrl-C (exit {p.returncode})\n"
                               + err)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            out, err = p.communicate(timeout=BLOCK_TIMEOUT_S)
            return Ran(p.returncode, out, err)
        except subprocess.TimeoutExpired:
            return Ran(-1, "", f"still running after {BLOCK_TIMEOUT_S:g}s")
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            self._adopt()

    def _adopt(self) -> None:
        for f in self.home.glob("*/cluster.json"):
            try:
                procs = msgspec.json.decode(f.read_bytes(), type=ClusterFile).processes
            except (OSError, msgspec.DecodeError):
                continue  # removed or being rewritten by a command: seen on the next look
            self.pids |= {(i.pid, i.create_time) for i in procs.values()}

    def reap(self) -> None:
        for pid, ctime in self.pids:
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - ctime) > 0.05:
                    continue
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(5)
            except psutil.Error:
                continue


def _failures(e: Expect, r: Ran, outs: list[str]) -> list[str]:
    bad: list[str] = []
    if r.code not in e.exits:
        bad.append(f"exit {r.code}, not {'|'.join(map(str, sorted(e.exits)))}")
    streams = {"out": r.out, "err": r.err}
    bad += [f'{s} lacks "{t}"' for s, t in e.has if t not in streams[s]]
    bad += [f'{s} has "{t}"' for s, t in e.lacks if t in streams[s]]
    bad += [f"no line of out matches /{rx}/" for rx in e.matches
            if not re.search(rx, r.out, re.MULTILINE)]
    bad += [f'out has "{t}" {r.out.count(t)} times, not {n} or more' for t, n in e.counts
            if r.out.count(t) < n]
    for name in e.checks:
        try:
            CHECKS[name]([*outs, r.out])
        except AssertionError as err:
            bad.append(f"check {name}: {err}")
    return bad


def run_block(s: Scratch, section: Section, b: Block, outs: list[str]) -> str:
    """Run `b` (again and again while `within` allows) until its expectation
    holds; fail naming the section and the block otherwise."""
    deadline = time.monotonic() + b.expect.within_s
    while True:
        r = s.run(b.code, b.expect.interrupt_s)
        bad = _failures(b.expect, r, outs)
        if not bad:
            return r.out
        if time.monotonic() >= deadline:
            waited = f" (for {b.expect.within_s:g}s)" if b.expect.within_s else ""
            pytest.fail(f"{section.title}: the block at docs/TUTORIAL.md:{b.line}\n{b.code}\n"
                        f"did not meet `{b.expect.text}`{waited}: {'; '.join(bad)}\n"
                        f"--- stdout\n{r.out}--- stderr\n{r.err}")


def _missing(needs: list[str]) -> list[str]:
    return [n for n in needs if n not in ClusterConfig.__struct_fields__]


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    s = Scratch(tmp_path)
    try:
        yield s
    finally:
        s.reap()


@pytest.mark.parametrize("section", [s for s in SECTIONS if s.blocks], ids=lambda s: s.slug)
def test_section(section: Section, scratch: Scratch) -> None:
    """Every command of the section does what the page says it does."""
    missing = _missing(section.needs)
    if missing:
        pytest.skip(f"needs the {', '.join(missing)} setting (ClusterConfig has none yet)")
    absent = [p for p in section.programs if shutil.which(p) is None]
    if absent:
        pytest.skip(f"needs {', '.join(absent)} on the PATH")
    outs: list[str] = []
    for b in section.blocks:
        outs.append(run_block(scratch, section, b, outs))


# --- the page itself ---------------------------------------------------------------------


def test_the_page_parses_into_the_lessons_sections() -> None:
    """The page has the lesson's parts, the commands of each are found, and
    every expectation and named check is one this test knows."""
    titles = [s.title for s in SECTIONS]
    for part in ("agreement and validity", "Termination needs a majority", "Split votes",
                 "election restriction", "Figure 8", "Paxos", "ZooKeeper and etcd",
                 "price of consensus", "on etcd"):
        assert any(part in t for t in titles), f"no section on {part}: {titles}"
    blocks = [b for s in SECTIONS for b in s.blocks]
    assert len(blocks) >= 30
    assert all(c in CHECKS for b in blocks for c in b.expect.checks)
    assert all(b.code.strip() for b in blocks)
    with pytest.raises(ValueError, match="unknown expectation"):
        parse_expect('out contains "x"')


def test_the_readme_tour_links_the_tutorial() -> None:
    """A newcomer reading the README's tour finds the tutorial."""
    readme = (ROOT / "README.md").read_text()
    tour = readme.split("## A tour", 1)[1].split("\n## ", 1)[0]
    assert "(docs/TUTORIAL.md)" in tour


def test_only_sections_that_need_a_missing_setting_skip() -> None:
    """A section skips only for a setting ClusterConfig lacks: today the
    split-vote section, for election_jitter_ticks, and no other."""
    skipping = {s.title: _missing(s.needs) for s in SECTIONS if _missing(s.needs)}
    assert set(skipping) <= {s.title for s in SECTIONS if "Split votes" in s.title}, skipping


def test_figure8_fails_when_a_leader_commits_by_counting_old_entries(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's Figure 8 experiment: with the current-term test removed
    from the leader's commit rule (§5.4.2), the scenario breaks State
    Machine Safety, and the harness says so."""
    from node.raft.core import RaftCore
    from tests.test_scenarios import SCENARIOS, run_script

    def commit_by_counting(self: RaftCore) -> bool:
        acked = {p: pr.match for p, pr in self.progress.items()}
        acked[self.id] = self.log.stable_index
        index = self._joint.committed_index(acked)
        if index <= self.log.commit:
            return False
        self.log.commit_to(index)
        return True

    monkeypatch.setattr(RaftCore, "_maybe_commit", commit_by_counting)
    with pytest.raises(AssertionError, match=r"applied .* at 2 where another node applied"):
        run_script(SCENARIOS / "figure8.txt")
