"""`raftctl member` against a real one-node cluster that grows and shrinks:
the --json shapes, what `status` shows of the configuration, and the exit
codes of what it refuses (docs/CLI.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from raftctl.cli import main
from raftctl.exits import Exit
from tests.procs import TestCluster, make_cluster, start_and_settle


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """A running one-node cluster, shared by the tests below (each leaves
    it with n1 the only voter)."""
    with make_cluster(tmp_path_factory.mktemp("member"), 1) as c:
        start_and_settle(c)
        yield c


def cli(c: TestCluster, *args: str) -> Result:
    r = CliRunner().invoke(main, ["--run-dir", str(c.run_dir), "-C", "test", *args])
    # What the command started is reaped with the cluster's own processes.
    for info in c.load().processes.values():
        if (info.pid, info.create_time) not in c.started:
            c.started.append((info.pid, info.create_time))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r


def test_a_member_added_promoted_and_removed(one: TestCluster) -> None:
    """add starts a learner, status shows it as one, promote makes it a
    voter, remove takes it out and stops it; each prints its --json shape."""
    r = cli(one, "member", "add", "--json")
    assert r.exit_code == 0, r.output
    added = json.loads(r.output)
    node = added["node"]
    assert added["action"] == "add" and added["learners"] == [node] and added["started"] == [node]
    rows = json.loads(cli(one, "status", "--json").output)
    assert {row["node"]: row["member"] for row in rows} == {"n1": "voter", node: "learner"}
    assert rows[0]["conf"]["voters"] == ["n1"] and not rows[0]["conf"]["joint"]
    r = cli(one, "member", "promote", node, "--wait", "10", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["voters"] == ["n1", node]
    table = cli(one, "member", "list").output
    assert f"voters n1,{node}" in table and "voter" in table
    r = cli(one, "member", "remove", node, "--json")
    assert r.exit_code == 0, r.output
    removed = json.loads(r.output)
    assert removed["stopped"] == [node] and removed["voters"] == ["n1"]
    doc = json.loads(cli(one, "member", "list", "--json").output)
    assert doc["voters"] == ["n1"] and not doc["joint"] and doc["committed"]
    assert {m["node"]: m["role"] for m in doc["members"]}[node] == "removed"
    assert [row["node"] for row in json.loads(cli(one, "status", "--json").output)] == ["n1"]


def test_removing_the_last_voter_is_refused(one: TestCluster) -> None:
    """A cluster needs a voter: exit 1 with the reason."""
    r = cli(one, "member", "remove", "n1")
    assert r.exit_code == Exit.FAILED
    assert "n1 is the cluster's last voter" in r.output


def test_an_unknown_member_is_a_usage_error(one: TestCluster) -> None:
    """A name that is no member: exit 2, naming the members, with --json too."""
    r = cli(one, "member", "promote", "n42", "--json")
    assert r.exit_code == Exit.USAGE
    err = json.loads(r.output.split("\nError")[0])["error"]
    assert "n42 is not a member" in err["message"] and "n1" in err["message"]


def test_promoting_a_voter_is_refused(one: TestCluster) -> None:
    """Only a learner is promoted."""
    r = cli(one, "member", "promote", "n1")
    assert r.exit_code == Exit.FAILED and "already a voter" in r.output
