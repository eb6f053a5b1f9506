"""The runner finds a real bug: with the old session-eviction bug put back
(RAFTCTL_TEST_UNSAFE_BUGS=apply_unknown_sessions, a retried write whose
session was evicted is applied again) and a small max_sessions, the default
`chaos run` reports the anomaly; the same runs on the real code are clean.
A 12 s run on ZeroMQ in the default suite, the default 60 s run on both
transports as a soak."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from chaos.checks import LINEARIZABLE
from chaos.set_checks import DUPLICATED_ELEMENTS
from node.state.kv import UNSAFE_APPLY_UNKNOWN_SESSIONS, UNSAFE_BUGS_ENV
from raftctl import cli
from tests.procs import TestCluster, chaos_run, make_cluster, start_and_settle

# Small enough that the default clients (18 long-lived sessions, and the
# short-lived ones) keep evicting one another.
MAX_SESSIONS = 16
# What the bug shows as: an element appended twice, or a register write
# applied twice (a value coming back after it was overwritten).
FINDINGS = {DUPLICATED_ELEMENTS, LINEARIZABLE}


@pytest.fixture
def evicting(request: pytest.FixtureRequest, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[TestCluster]:
    """A running 3-node cluster with a small max_sessions, on the transport
    and with the bug switch (on or off) the test's parameters name. The
    switch is in this process's environment, so nodes the run restarts
    keep it."""
    transport, bug = request.param
    if bug:
        monkeypatch.setenv(UNSAFE_BUGS_ENV, UNSAFE_APPLY_UNKNOWN_SESSIONS)
    else:
        monkeypatch.delenv(UNSAFE_BUGS_ENV, raising=False)
    with make_cluster(tmp_path, 3, transport=transport, max_sessions=MAX_SESSIONS) as c:
        start_and_settle(c)
        yield c


def _failed_rows(rep: dict[str, object]) -> set[str]:
    verdict = rep["verdict"]
    assert isinstance(verdict, dict)
    return {row for row, text in verdict["checks"].items() if not text.startswith("ok")}


@pytest.mark.parametrize("evicting", [("zmq", True)], indirect=True)
def test_a_short_default_run_finds_the_eviction_bug(evicting: TestCluster) -> None:
    """12 s of the default workloads and nemeses: the bug shows as a
    duplicated element or a non-linearizable register, the run exits 1, and
    the nodes say (status, notes, `raftctl status`) that they run with it."""
    st = evicting.statuses()
    assert all(s["unsafe_bugs"] == [UNSAFE_APPLY_UNKNOWN_SESSIONS] for s in st.values()), st
    shown = CliRunner().invoke(cli.main, ["--run-dir", str(evicting.run_dir), "status"])
    assert "test-only bugs are on" in shown.output
    code, rep = chaos_run(evicting, "--duration", "12s", "--interval", "1.5s", "--seed", "7")
    assert code == 1, rep["verdict"]
    assert _failed_rows(rep) & FINDINGS, rep["verdict"]["checks"]
    assert any("apply_unknown_sessions" in n for n in rep["notes"])


# A soak (CI runs it): the default suite's other chaos runs are clean on
# the real code too, and its time is kept under 10 minutes.
@pytest.mark.soak
@pytest.mark.parametrize("evicting", [("zmq", False)], indirect=True)
def test_the_same_short_run_on_the_real_code_is_clean(evicting: TestCluster) -> None:
    """The control: the same cluster settings and run without the bug are
    clean, although sessions are evicted all along (writes are refused with
    session_expired, never applied twice)."""
    assert all(s["unsafe_bugs"] == [] for s in evicting.statuses().values())
    code, rep = chaos_run(evicting, "--duration", "12s", "--interval", "1.5s", "--seed", "7")
    assert code == 0, rep["verdict"]
    assert rep["operations"]["append"]["ok"] > 100, rep["operations"]
    assert any(n.startswith("power-loss skipped: n1's data directory is not a power-loss mount")
               for n in rep["notes"]), rep["notes"]


@pytest.mark.soak
@pytest.mark.parametrize("evicting", [("zmq", True), ("udp", True), ("zmq", False),
                                      ("udp", False)], indirect=True,
                         ids=["zmq-bug", "udp-bug", "zmq-real", "udp-real"])
def test_the_default_minute_finds_the_bug_and_only_the_bug(evicting: TestCluster) -> None:
    """`chaos run --duration 60` with every default: with the bug it reports
    the anomaly on either transport; on the real code it is clean."""
    bug = any(s["unsafe_bugs"] for s in evicting.statuses().values())
    code, rep = chaos_run(evicting, "--duration", "60s", "--seed", "11",
                          "--recovery-timeout", "20s")
    if bug:
        assert code == 1 and _failed_rows(rep) & FINDINGS, rep["verdict"]["checks"]
    else:
        assert code == 0, rep["verdict"]
