"""The scripts behind `--kernel` on hosts: which iptables rules a fault
becomes on each receiving host, the netem a sending host gets, and what
stays in the transports. The live rules are checked on real hosts in
tests/test_remote_cluster.py; netem is here only, as this machine's kernel
has none."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from chaos.faults import FaultState, Netem, compile_rules, isolate, one_way, with_blocks
from node.config import NodeSpec
from node.transport.links import LinkRule
from raftctl.remote import kernel as hk

NODES = [NodeSpec(id=f"n{i}", host=f"10.0.0.{i}", peer_port=27100 + i, client_port=27200 + i,
                  control_port=27300 + i) for i in (1, 2, 3)]
IDS = [n.id for n in NODES]


def test_an_isolated_node_drops_its_peers_at_its_peer_port() -> None:
    """Isolating n1: n1's host drops what n2 and n3 send to its peer port,
    and each of them drops what n1 sends to theirs; nothing else."""
    rules = compile_rules(with_blocks(FaultState(), isolate("n1", IDS), "n1 isolated"), IDS)
    on_n1 = hk.input_rules("C", rules, NODES, ["n1"], udp=False)
    assert on_n1 == [
        "-A C -s 10.0.0.2/32 -d 10.0.0.1/32 -p tcp --dport 27101 -j DROP",
        "-A C -s 10.0.0.3/32 -d 10.0.0.1/32 -p tcp --dport 27101 -j DROP"]
    on_n2 = hk.input_rules("C", rules, NODES, ["n2"], udp=False)
    assert on_n2 == ["-A C -s 10.0.0.1/32 -d 10.0.0.2/32 -p tcp --dport 27102 -j DROP"]


def test_one_way_block_and_udp_source_port() -> None:
    """A one-way block is dropped only at the receiver; over UDP the rule
    also matches the sender's peer port."""
    rules = compile_rules(with_blocks(FaultState(), one_way("n1", "n2"), "n1->n2"), IDS)
    assert hk.input_rules("C", rules, NODES, ["n1"], udp=True) == []
    assert hk.input_rules("C", rules, NODES, ["n2"], udp=True) == [
        "-A C -s 10.0.0.1/32 -d 10.0.0.2/32 -p udp --dport 27102 --sport 27101 -j DROP"]


def test_loss_is_a_random_drop() -> None:
    """5% loss on n1->n2 is a statistic match at n2."""
    rules = {"n1": {"n2": LinkRule(loss=0.05)}}
    assert hk.input_rules("C", rules, NODES, ["n2"], udp=False) == [
        "-A C -s 10.0.0.1/32 -d 10.0.0.2/32 -p tcp --dport 27102 -m statistic --mode random "
        "--probability 0.050000 -j DROP"]


@pytest.mark.skipif(shutil.which("iptables-restore") is None, reason="needs iptables-restore")
def test_restore_text_is_accepted_by_iptables(tmp_path: Path) -> None:
    """The chain's restore text passes iptables-restore's own check (--test
    changes nothing)."""
    rules = compile_rules(with_blocks(FaultState(), isolate("n1", IDS), "x"), IDS)
    chain = hk.chain_name(tmp_path)
    text = hk.restore_input(chain, hk.input_rules(chain, rules, NODES, ["n1"], udp=False))
    p = subprocess.run(["iptables-restore", "--test"], input=f"*filter\n:{chain} - [0:0]\n"
                       + text.split("\n", 1)[1], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_netem_script_filters_each_link_into_its_band() -> None:
    """Delay, jitter, duplicate and reorder on n1's links become one netem
    band per link, chosen by source, destination and peer port."""
    rules = compile_rules(FaultState(netem={"n1>n2": Netem(delay_ms=50, jitter_ms=10),
                                            "n1>n3": Netem(duplicate=0.01, reorder=0.02)}), IDS)
    script = hk.netem_script(rules, NODES, ["n1"])
    assert "root handle 1: prio bands 16 priomap" in script
    assert 'parent 1:2 handle 20: netem delay 50ms 10ms' in script
    assert 'parent 1:3 handle 30: netem delay 1ms duplicate 1% reorder 2%' in script
    assert ("match ip src 10.0.0.1/32 match ip dst 10.0.0.2/32 match ip dport 27102 0xffff "
            "flowid 1:2") in script
    assert hk.netem_script(rules, NODES, ["n2"]) == "", "n2 sends nothing faulty"
    p = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_what_stays_in_the_transport() -> None:
    """Cuts and loss leave the transport; delay and the rest leave it only
    where the sending host has netem."""
    rule = LinkRule(block_out=True, loss=0.1, delay_ms=5, duplicate=0.1)
    assert hk.transport_part(rule, netem=False) == LinkRule(delay_ms=5, duplicate=0.1)
    assert hk.transport_part(rule, netem=True) == LinkRule()


def test_chain_name_fits_iptables() -> None:
    """A chain name is at most 28 characters and the same for a run directory."""
    name = hk.chain_name(Path("/x" * 200))
    assert len(name) <= 28 and name == hk.chain_name(Path("/x" * 200))
