"""What a cluster leaves on disk is its owner's alone: the run directory
and every directory under it 0700, every file 0600 whatever the umask; a
keys file owned by someone else is refused; temporary files are created
exclusively, never through a planted link; a cluster name cannot lead out
of the clusters' home."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from node.transport.auth import KeysError, generate_keys, read_keys, write_keys
from raftctl.cli import main
from raftctl.cluster import ClusterError, default_run_dir
from tests.procs import make_cluster, start_and_settle


@pytest.fixture(params=[0o000, 0o022])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The test runs, and the nodes it starts inherit, this umask."""
    old = os.umask(int(request.param))
    try:
        yield int(request.param)
    finally:
        os.umask(old)


def _loose(root: Path) -> list[str]:
    """Everything under `root` (and itself) that others could reach."""
    out = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode):
            continue
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if stat.S_IMODE(st.st_mode) & ~want:
            out.append(f"{path.relative_to(root.parent)} {stat.S_IMODE(st.st_mode):04o}")
    return out


def test_a_running_cluster_keeps_everything_private(tmp_path: Path, umask: int) -> None:
    """After up, a write, a fault and a restart, nothing under the run
    directory is readable by another user, whatever the umask was."""
    with make_cluster(tmp_path, 1) as c:
        start_and_settle(c)
        with c.client() as cl:
            assert cl.put("k", b"v").ok
        c.set_links("n1", {})
        c.remember_leader("n1")
        c.stop("n1")
        c.start("n1")
        c.wait_for_leader(10.0)
        assert not _loose(c.run_dir), f"umask {umask:03o}: {_loose(c.run_dir)}"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_keys_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """Mode 0600 is not enough: a keys file another user owns (and so could
    have planted, with keys they know) is refused, naming the owner."""
    path = tmp_path / "keys"
    write_keys(path, generate_keys())
    os.chown(path, 65534, 65534)
    with pytest.raises(KeysError, match="owned by"):
        read_keys(path)


def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    """A symlink where the keys' temporary file once went (`.keys.tmp`) is
    left alone: the secret is never written through it."""
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    (tmp_path / ".keys.tmp").symlink_to(target)
    keys = generate_keys()
    write_keys(tmp_path / "keys", keys)
    assert target.read_text() == "untouched"
    assert read_keys(tmp_path / "keys") == keys


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", ".", "", "x" * 65, "sp ace"])
def test_a_cluster_name_must_be_a_plain_identifier(tmp_path: Path, name: str) -> None:
    """-C ../../etc once put a run directory outside the home: refused, exit 2."""
    r = CliRunner().invoke(main, ["--home", str(tmp_path), "-C", name, "status"])
    assert r.exit_code == 2, r.output
    assert "cluster name" in r.output
    with pytest.raises(ClusterError, match="cluster name"):
        default_run_dir(name, tmp_path)

