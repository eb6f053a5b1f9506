"""The inventory of a cluster file ([hosts.NODE], defaults in [ssh]): what
it gives each node, and every mistake it refuses with a sentence that
names the field. No SSH here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from raftctl.cluster import ClusterError
from raftctl.remote.inventory import HostSpec, load_hosts_config, read_hosts, save_hosts

_NODES = "".join(f'\n[[nodes]]\nid = "n{i}"\npeer_port = {27100 + i}\n'
                 f"client_port = {27200 + i}\ncontrol_port = {27300 + i}\n" for i in (1, 2, 3))


def _load(tmp_path: Path, text: str) -> tuple[object, dict[str, HostSpec]]:
    path = tmp_path / "c.toml"
    path.write_text(_NODES + text)
    return load_hosts_config(path)


def test_hosts_give_addresses_and_take_ssh_defaults(tmp_path: Path) -> None:
    """Each node binds its host's address; [ssh] fills what a host leaves out."""
    cfg, hosts = _load(tmp_path, '[ssh]\nuser = "raft"\nport = 2200\n'
                                 '[hosts.n1]\naddress = "10.0.0.11"\n'
                                 '[hosts.n2]\naddress = "10.0.0.12"\nport = 22\n'
                                 '[hosts.n3]\naddress = "10.0.0.13"\ninstall_path = "/opt/r"\n')
    assert [n.host for n in cfg.nodes] == ["10.0.0.11", "10.0.0.12", "10.0.0.13"]  # type: ignore[attr-defined]  # a ClusterConfig
    assert hosts["n1"].user == "raft" and hosts["n1"].port == 2200
    assert hosts["n2"].port == 22
    assert hosts["n3"].run_dir("c") == "/opt/r/clusters/c"
    assert hosts["n1"].run_dir("c") == "raftctl/clusters/c"


def test_no_hosts_is_a_local_cluster(tmp_path: Path) -> None:
    """A cluster file without [hosts] gives an empty inventory."""
    _, hosts = _load(tmp_path, "")
    assert hosts == {}


@pytest.mark.parametrize(("text", "names"), [
    ('[hosts.n9]\naddress = "10.0.0.9"\n', "hosts.n9: there is no node n9"),
    ('[hosts.n1]\naddress = "db1.example"\n', "hosts.n1.address: 'db1.example' is not an IPv4"),
    ('[hosts.n1]\naddress = "10.0.0.1"\nport = 0\n', "hosts.n1.port: 0 is not a port"),
    ('[hosts.n1]\naddress = "10.0.0.1"\nadress = "x"\n', "unknown field `adress`"),
    ('[ssh]\naddress = "10.0.0.1"\n', "ssh.address: not a setting of [ssh]"),
    ('[hosts.n1]\naddress = "10.0.0.1"\n', "n2 runs on this machine bound to 127.0.0.1"),
])
def test_mistakes_are_refused_by_name(tmp_path: Path, text: str, names: str) -> None:
    """A wrong inventory is refused, naming the field and what is wrong."""
    if "n2 runs" not in names and "n9" not in names:
        text += "".join(f'[hosts.n{i}]\naddress = "10.0.0.{i + 10}"\n' for i in (2, 3))
    with pytest.raises(ClusterError, match=re.escape(names)):
        _load(tmp_path, text)


def test_a_node_given_two_addresses_is_refused(tmp_path: Path) -> None:
    """A node whose own host differs from its [hosts] address is refused."""
    path = tmp_path / "c.toml"
    path.write_text(_NODES.replace('id = "n1"\n', 'id = "n1"\nhost = "10.9.9.9"\n')
                    + "".join(f'[hosts.n{i}]\naddress = "10.0.0.{i}"\n' for i in (1, 2, 3)))
    with pytest.raises(ClusterError, match=re.escape("n1 has host 10.9.9.9 but hosts.n1.address")):
        load_hosts_config(path)


def test_inventory_round_trips_through_the_run_directory(tmp_path: Path) -> None:
    """hosts.json holds the inventory as given."""
    hosts = {"n1": HostSpec(address="10.0.0.1", user="u", identity_file="~/.ssh/k")}
    save_hosts(tmp_path, hosts)
    assert read_hosts(tmp_path) == hosts
    assert read_hosts(tmp_path / "nowhere") == {}


# --- what the command line refuses -------------------------------------------------------


def _raftctl(tmp_path: Path, *args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from raftctl.cli import main

    r = CliRunner().invoke(main, ["--run-dir", str(tmp_path / "run"), *args])
    return r.exit_code, r.output


def test_kernel_faults_on_a_local_cluster_point_to_netns(tmp_path: Path) -> None:
    """--kernel is for clusters on hosts: on a local one it is a usage error
    that names `up --netns`, and no fault is recorded."""
    from raftctl.cluster import Cluster, make_config

    c = Cluster(tmp_path / "run", "t")
    c.create(make_config(3, name="t"))
    code, out = _raftctl(tmp_path, "partition", "--kernel", "--isolate", "n1")
    assert code == 2 and "raftctl up --netns" in out, out
    assert c.load_faults().is_clear()


def test_netns_with_hosts_and_wheel_without_are_refused(tmp_path: Path) -> None:
    """up --netns with a cluster file that has hosts, and up --wheel for a
    cluster without hosts, are usage errors; neither makes a run directory."""
    path = tmp_path / "c.toml"
    path.write_text(_NODES + "".join(f'[hosts.n{i}]\naddress = "10.0.0.{i}"\n' for i in (1, 2, 3)))
    code, out = _raftctl(tmp_path, "up", "-c", str(path), "--netns=bridge")
    assert code == 2 and "--kernel" in out, out
    assert not (tmp_path / "run" / "cluster.json").exists()
    wheel = tmp_path / "x.whl"
    wheel.write_bytes(b"")
    code, out = _raftctl(tmp_path, "up", "-n", "3", "--wheel", str(wheel), "--wait", "0.1")
    assert code == 2 and "clusters on hosts" in out, out
    assert not (tmp_path / "run" / "cluster.json").exists()
