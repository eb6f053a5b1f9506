"""The command line where no node needs to run: exit codes and their docs,
usage errors, `--json` on every command, faults recorded for a stopped
cluster, `logs` over written files, `ls` over a home, and shell completion."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from node.logs import EVENTS
from raftctl.cli import main
from raftctl.cluster import Cluster, make_config
from raftctl.exits import MEANINGS, Exit

ROOT = Path(__file__).parent.parent


def invoke(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> Result:
    r = CliRunner().invoke(main, list(args), input=stdin, env=env)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r


def stopped_cluster(run_dir: Path, n: int = 3, name: str = "test") -> Cluster:
    """A set-up cluster whose nodes never ran: enough for every command
    that only reads or writes the run directory."""
    c = Cluster(run_dir, name)
    c.create(make_config(n, name=name))
    return c


@pytest.fixture
def stopped(tmp_path: Path) -> Iterator[tuple[Cluster, list[str]]]:
    c = stopped_cluster(tmp_path / "run")
    yield c, ["--run-dir", str(c.run_dir), "-C", "test"]


# --- exit codes ----------------------------------------------------------------------


def test_help_lists_every_exit_code() -> None:
    """`raftctl --help` ends with the exit-code table, one line per code."""
    out = " ".join(invoke("--help").stdout.split())
    for code in Exit:
        assert f"{int(code)} {' '.join(MEANINGS[code].split())}" in out, code


def test_docs_list_exactly_the_exit_codes() -> None:
    """docs/CLI.md's table has one row per exit code, with its name, and no other."""
    doc = (ROOT / "docs" / "CLI.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", doc, re.MULTILINE)
    assert [(int(c), n) for c, n in rows] == [(int(e), e.name) for e in Exit]


@pytest.mark.parametrize("args", [
    ["status"], ["leader"], ["put", "k", "v"], ["get", "k"], ["del", "k"], ["cas", "k", "a", "b"],
    ["kill", "n1"], ["start"], ["logs"], ["watch", "--count", "1"], ["heal"],
    ["partition", "--isolate", "n1"], ["netem", "--delay", "1ms"], ["transfer", "n1"], ["down"],
], ids=lambda a: a[0])
def test_a_cluster_not_set_up_is_unavailable(tmp_path: Path, args: list[str]) -> None:
    """Every command on a cluster that is not set up exits 3 with one
    sentence, and with --json prints the error object on stdout."""
    r = invoke("--run-dir", str(tmp_path / "none"), *args)
    assert r.exit_code == Exit.UNAVAILABLE, r.output
    assert "is not set up" in r.stderr and "Traceback" not in r.output
    r = invoke("--run-dir", str(tmp_path / "none"), *args, "--json")
    assert r.exit_code == Exit.UNAVAILABLE
    err = json.loads(r.stdout)["error"]
    assert err["exit_code"] == 3 and err["reason"] == "unavailable"
    assert "is not set up" in err["message"]


@pytest.mark.parametrize(("args", "says"), [
    (["kill", "n7"], "node n7 is not in cluster test (nodes: n1, n2, n3)"),
    (["logs", "n7"], "node n7 is not in cluster test"),
    (["get", "k", "--limit", "3"], "--limit, --keys-only and --count-only go with --prefix"),
    (["kill"], "name the nodes, or give --leader or --random"),
    (["netem", "--link", "n1:n1", "--delay", "5ms"], "is not A:B with two nodes"),
    (["partition", "n1,n9", "n2"], "not in the cluster: n9"),
], ids=lambda a: a[0] if isinstance(a, list) else "")
def test_usage_errors_exit_2(stopped: tuple[Cluster, list[str]], args: list[str],
                             says: str) -> None:
    """A name or option that cannot be right is a usage error: exit 2, and why."""
    _, base = stopped
    r = invoke(*base, *args)
    assert r.exit_code == Exit.USAGE and says in r.stderr, r.output


def test_unexpected_errors_exit_70_in_one_line(tmp_path: Path) -> None:
    """A bug anywhere ends with one line on stderr and exit 70, never a traceback."""
    run_dir = tmp_path / "run"
    (run_dir / "cluster.json").mkdir(parents=True)  # a state no code path expects
    env = {**os.environ, "RAFTCTL_RUN_DIR": str(run_dir)}
    env.pop("RAFTCTL_DEBUG", None)
    p = subprocess.run([sys.executable, "-m", "raftctl", "status"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == Exit.INTERNAL, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "internal error: IsADirectoryError" in p.stderr


# --- --json everywhere -----------------------------------------------------------------


def _commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def test_every_command_takes_json_and_docs_give_its_shape() -> None:
    """Each command has a --json that also turns failures into JSON, and
    docs/CLI.md has a section naming it."""
    doc = (ROOT / "docs" / "CLI.md").read_text()
    headings = " ".join(re.findall(r"^### (.*)$", doc, re.MULTILINE))
    for name, cmd in _commands(main):
        opt = next((p for p in cmd.params if "--json" in getattr(p, "opts", [])), None)
        assert opt is not None, f"raftctl {name} has no --json"
        assert opt.callback is not None, f"raftctl {name}: --json does not use json_option"
        words = name.split()
        assert f"`raftctl {name}`" in headings or f"`{words[-1]}`" in headings \
            or f"`raftctl {words[0]}" in headings, f"docs/CLI.md has no shape for {name}"


def test_version_json() -> None:
    """`version --json` is an object with the version."""
    assert set(json.loads(invoke("version", "--json").stdout)) == {"version"}


def test_watch_json_is_one_line_a_refresh(stopped: tuple[Cluster, list[str]]) -> None:
    """`watch --json --count 2` prints two lines, each a whole status."""
    _, base = stopped
    r = invoke(*base, "watch", "--json", "--count", "2", "--interval", "0.01")
    lines = r.stdout.splitlines()
    assert r.exit_code == 0 and len(lines) == 2, r.output
    for line in lines:
        doc = json.loads(line)
        assert doc["cluster"] == "test" and doc["leader"] is None
        assert [n["state"] for n in doc["nodes"]] == ["down"] * 3


def test_status_of_a_stopped_cluster_exits_3(stopped: tuple[Cluster, list[str]]) -> None:
    """`status` prints every node down, says no node leads, and exits 3."""
    _, base = stopped
    r = invoke(*base, "status", "--json")
    assert r.exit_code == Exit.UNAVAILABLE
    assert [n["state"] for n in json.loads(r.stdout)] == ["down"] * 3
    assert "has no leader: no node is running" in r.stderr


# --- faults ---------------------------------------------------------------------------


def test_ring_on_three_nodes_is_refused_with_the_reason(
        stopped: tuple[Cluster, list[str]]) -> None:
    """`partition --ring` on 3 nodes installs nothing and says why (exit 2);
    on 4 it cuts links."""
    c, base = stopped
    r = invoke(*base, "partition", "--ring")
    assert r.exit_code == Exit.USAGE
    assert "a majorities ring needs at least 4 nodes" in r.stderr
    assert c.load_faults().is_clear()
    r = invoke(*base, "partition", "n1,n2,n3")
    assert r.exit_code == Exit.USAGE and "cuts no link" in r.stderr
    four = stopped_cluster(c.run_dir.parent / "four", 4)
    r = invoke("--run-dir", str(four.run_dir), "partition", "--ring", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["blocked"] and four.load_faults().blocked


def test_netem_adds_unless_replace(stopped: tuple[Cluster, list[str]]) -> None:
    """`netem` adds settings to a link's rule and says so; --replace sets
    exactly the settings given; --clear removes them; --json shows each."""
    c, base = stopped
    first = invoke(*base, "netem", "--delay", "50ms")
    assert first.exit_code == 0 and "added delay 50ms to all links" in first.stdout
    r = invoke(*base, "netem", "--loss", "5%", "--link", "n1:n2", "--json")
    doc = json.loads(r.stdout)
    assert doc["netem"]["n1>n2"]["delay_ms"] == 50.0 and doc["netem"]["n1>n2"]["loss"] == 0.05
    assert doc["netem"]["n1>n3"] == {**doc["netem"]["n1>n3"], "delay_ms": 50.0, "loss": 0.0}
    assert "netem delay 50ms loss 5% on n1:n2" in doc["faults"]
    r = invoke(*base, "netem", "--replace", "--jitter", "3ms", "--link", "n1:n2")
    assert "replaced the rule on n1:n2 with jitter 3ms" in r.stdout
    rule = c.load_faults().netem["n2>n1"]
    assert (rule.delay_ms, rule.loss, rule.jitter_ms) == (0.0, 0.0, 3.0)
    invoke(*base, "netem", "--clear")
    assert c.load_faults().is_clear()


def test_fault_commands_print_json(stopped: tuple[Cluster, list[str]]) -> None:
    """partition, block and heal take --json: the change and every active fault."""
    _, base = stopped
    doc = json.loads(invoke(*base, "partition", "--isolate", "n1", "--json").stdout)
    assert doc["change"] == "partition: n1 isolated" and doc["not_running"] == ["n1", "n2", "n3"]
    assert ["n1", "n2"] in doc["blocked"] and ["n2", "n1"] in doc["blocked"]
    doc = json.loads(invoke(*base, "block", "n2", "n3", "--one-way", "--json").stdout)
    assert ["n2", "n3"] in doc["blocked"] and ["n3", "n2"] not in doc["blocked"]
    doc = json.loads(invoke(*base, "heal", "--json").stdout)
    assert doc["healed"] and doc["blocked"] == [] and doc["netem"] == {}


# --- logs ------------------------------------------------------------------------------


def _write_log(c: Cluster, node: str, events: list[tuple[str, str]]) -> None:
    path = c.log_path(node)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for ts, event in events:
            f.write(json.dumps({"ts": ts, "level": "info", "node": node, "term": 1,
                                "role": "follower", "event": event}) + "\n")


@pytest.fixture
def logged(stopped: tuple[Cluster, list[str]]) -> tuple[Cluster, list[str]]:
    c, base = stopped
    _write_log(c, "n1", [("2026-01-01T00:00:01.000000Z", "node_started"),
                         ("2026-01-01T00:00:03.000000Z", "became_leader")])
    _write_log(c, "n2", [("2026-01-01T00:00:02.000000Z", "node_started"),
                         ("2026-01-01T00:00:04.000000Z", "became_follower")])
    # A line being written right now: neither shown nor cut.
    with open(c.log_path("n2"), "a") as f:
        f.write('{"ts": "2026-01-01T00:00:05.000000Z", "ev')
    return c, base


def _events(r: Result) -> list[tuple[str, str]]:
    return [(e["node"], e["event"]) for e in map(json.loads, r.stdout.splitlines())]


def test_logs_unknown_event_lists_the_vocabulary(logged: tuple[Cluster, list[str]]) -> None:
    """`logs --event nosuch` says no such event exists and lists them all (exit 2)."""
    _, base = logged
    r = invoke(*base, "logs", "--event", "nosuch")
    assert r.exit_code == Exit.USAGE and "no event is named 'nosuch'" in r.stderr
    assert all(e in r.stderr for e in EVENTS)
    r = invoke(*base, "logs", "--event", "became_leadr")
    assert "did you mean became_leader?" in r.stderr


def test_logs_tail_and_since(logged: tuple[Cluster, list[str]]) -> None:
    """-n/--tail keeps the last N events after the filters, in time order;
    --since takes a time or a duration."""
    _, base = logged
    everything = _events(invoke(*base, "logs", "--json"))
    assert everything == [("n1", "node_started"), ("n2", "node_started"),
                          ("n1", "became_leader"), ("n2", "became_follower")]
    assert _events(invoke(*base, "logs", "--json", "-n", "2")) == everything[2:]
    assert _events(invoke(*base, "logs", "--json", "--tail", "1", "n1")) == everything[2:3]
    assert _events(invoke(*base, "logs", "--json", "--event", "node_started", "-n", "1")) \
        == everything[1:2]
    since = invoke(*base, "logs", "--json", "--since", "2026-01-01T00:00:02.5Z")
    assert _events(since) == everything[2:]
    assert _events(invoke(*base, "logs", "--json", "--since", "1h")) == []
    r = invoke(*base, "logs", "--since", "yesterday")
    assert r.exit_code == Exit.USAGE and "neither a duration" in r.stderr
    follow = invoke(*base, "logs", "--json", "-f", "-n", "1", "--for", "0.2")
    assert _events(follow) == everything[3:]


# --- where clusters live ---------------------------------------------------------------


def test_home_holds_clusters_and_ls_lists_them(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`--home H -C NAME` acts on H/NAME (RAFTCTL_HOME too); `ls` lists
    every cluster under the home; without a home, ./.raftctl is the home."""
    home = tmp_path / "home"
    stopped_cluster(home / "alpha", name="alpha")
    stopped_cluster(home / "beta", n=1, name="beta")
    r = invoke("--home", str(home), "-C", "beta", "ls", "--json")
    # Keyed by run directory: clusters others run on this machine are listed too.
    found = {Path(f["run_dir"]).name: f for f in json.loads(r.stdout)
             if Path(f["run_dir"]).parent == home.resolve()}
    assert set(found) == {"alpha", "beta"}, r.output
    assert found["alpha"] == {"name": "alpha", "run_dir": str((home / "alpha").resolve()),
                              "nodes": 3, "up": 0, "leader": None, "current": False,
                              "problem": None}
    assert found["beta"]["current"] and found["beta"]["nodes"] == 1
    text = invoke("ls", env={"RAFTCTL_HOME": str(home)}).stdout
    assert "alpha" in text and "0/3" in text
    r = invoke("-C", "beta", "status", "--json", env={"RAFTCTL_HOME": str(home)})
    assert [n["node"] for n in json.loads(r.stdout)] == ["n1"]
    monkeypatch.chdir(tmp_path)
    stopped_cluster(tmp_path / ".raftctl" / "default", name="default")
    here = str((tmp_path / ".raftctl" / "default").resolve())
    mine = [f for f in json.loads(invoke("ls", "--json").stdout) if f["run_dir"] == here]
    assert [(f["name"], f["current"]) for f in mine] == [("default", True)]


def test_home_is_documented_in_help() -> None:
    """`raftctl --help` names --home and RAFTCTL_HOME."""
    out = invoke("--help").stdout
    assert "--home" in out and "RAFTCTL_HOME" in out


# --- completion and stdin --------------------------------------------------------------


def _complete(env: dict[str, Any], words: str) -> list[str]:
    p = subprocess.run([sys.executable, "-m", "raftctl"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={
                           **env, "_RAFTCTL_COMPLETE": "bash_complete", "COMP_WORDS": words,
                           "COMP_CWORD": str(len(words.split()) - 1)})
    assert p.returncode == 0, p.stderr
    return [line.split(",", 1)[1] for line in p.stdout.splitlines()]


def test_shell_completion_of_kill(stopped: tuple[Cluster, list[str]]) -> None:
    """With _RAFTCTL_COMPLETE, `raftctl kill n<TAB>` offers the cluster's
    nodes, and bash_source prints the script the docs tell users to eval."""
    c, _ = stopped
    env = {**os.environ, "RAFTCTL_RUN_DIR": str(c.run_dir)}
    assert _complete(env, "raftctl kill n") == ["n1", "n2", "n3"]
    assert _complete(env, "raftctl logs --event became_") == ["became_follower",
                                                              "became_leader"]
    p = subprocess.run([sys.executable, "-m", "raftctl"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={**env, "_RAFTCTL_COMPLETE": "bash_source"})
    assert "_RAFTCTL_COMPLETE=bash_complete" in p.stdout and "complete " in p.stdout
    assert "_RAFTCTL_COMPLETE=bash_source" in (ROOT / "docs" / "CLI.md").read_text()


def test_a_value_over_one_mib_on_stdin_is_refused(tmp_path: Path) -> None:
    """`put k -` refuses more than 1 MiB before it looks for a cluster (exit 2)."""
    r = invoke("--run-dir", str(tmp_path), "put", "k", "-", stdin=b"x" * (1024 * 1024 + 1))
    assert r.exit_code == Exit.USAGE and "over 1,048,576 bytes" in r.stderr


def test_a_cluster_file_with_an_unknown_setting_is_refused_naming_it(tmp_path: Path) -> None:
    """A misspelt setting in a cluster file is an error that names it (it was
    once dropped in silence), and nothing is created."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('electon_ticks = 20\n[[nodes]]\nid = "n1"\npeer_port = 1\n'
                   'client_port = 2\ncontrol_port = 3\n')
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(main, ["--run-dir", str(run_dir), "up", "-c", str(cfg)])
    assert r.exit_code == Exit.FAILED, r.output
    assert "unknown setting electon_ticks" in r.output and "election_ticks" in r.output
    assert not (run_dir / "cluster.json").exists()
