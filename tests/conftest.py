"""pytest options of the test suite: `--rewrite-scenarios` regenerates the
expected output of tests/scenarios/*.txt instead of comparing against it."""

from __future__ import annotations

import pytest


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
