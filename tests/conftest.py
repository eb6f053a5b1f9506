"""pytest options of the test suite: `--rewrite-scenarios` regenerates the
expected output of tests/scenarios/*.txt instead of comparing against it.
A suite ended by SIGTERM (a `timeout`, a CI job cancelled) still tears its
fixtures down, so no node process it started outlives it."""

from __future__ import annotations

import signal
from types import FrameType

import pytest


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt("SIGTERM")


def pytest_configure(config: pytest.Config) -> None:
    # Python's default SIGTERM ends the process at once, skipping every
    # fixture's teardown; as Ctrl-C, pytest stops and tears them down.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite-scenarios",
        action="store_true",
        default=False,
        help="rewrite the expected output in tests/scenarios/*.txt from the current code",
    )


@pytest.fixture(params=["zmq", "udp"])
def transport(request: pytest.FixtureRequest) -> str:
    """The peer transport of a real-process test: every such test runs on
    both (tests/procs.py's cluster fixtures take it)."""
    return str(request.param)
