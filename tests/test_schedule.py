"""The nemesis schedule: a pure function of seed, nodes, mix and the leader
oracle; faults and heals in cycles; every kind of the default mix in a 60 s
run; the leader hit in every run; weights respected; bad mixes refused."""

from __future__ import annotations

from collections import Counter

import pytest

from chaos.schedule import (
    DEFAULT_MIX,
    KINDS,
    LEADER,
    NEMESIS_INTERVAL_S,
    POWER_LOSS,
    Oracle,
    Schedule,
    Step,
    View,
    parse_mix,
    plan,
)


def _nodes(n: int) -> list[str]:
    return [f"n{i + 1}" for i in range(n)]


def _rotating_oracle(nodes: list[str]) -> Oracle:
    """A leader that changes every 10 s; its successor is the next node."""
    def oracle(t: float) -> View:
        k = int(t // 10) % len(nodes)
        return View(leader=nodes[k], successor=nodes[(k + 1) % len(nodes)])
    return oracle


def _fixed(view: View) -> Oracle:
    return lambda t: view


def _plan(seed: int, n: int = 5, mix: str = DEFAULT_MIX, duration_s: float = 60.0) -> list[Step]:
    nodes = _nodes(n)
    return plan(seed, nodes, parse_mix(mix), _rotating_oracle(nodes), duration_s)


def test_the_same_seed_gives_the_same_schedule() -> None:
    """(time, kind, targets) of every fault is a function of seed, nodes and oracle."""
    for seed in range(20):
        a = [s.key() for s in _plan(seed)]
        b = [s.key() for s in _plan(seed)]
        assert a == b and a


def test_other_seeds_give_other_schedules() -> None:
    """The seed decides the order of kinds and the targets."""
    keys = {tuple(s.key() for s in _plan(seed)) for seed in range(20)}
    assert len(keys) == 20


def test_the_schedule_follows_the_oracle() -> None:
    """Targets aimed at the leader follow whoever the oracle says leads."""
    nodes = _nodes(5)
    for lead in nodes:
        steps = plan(3, nodes, parse_mix(DEFAULT_MIX), _fixed(View(leader=lead)), 60.0)
        aimed = [s for s in steps if s.spec == LEADER and s.kind not in ("partition", "bridge")]
        assert aimed and all(s.targets == (lead,) for s in aimed), aimed


def test_faults_and_heals_come_in_cycles() -> None:
    """A quiet interval, then fault for one interval, heal, quiet, and so on."""
    steps = _plan(1)
    iv = NEMESIS_INTERVAL_S
    assert [s.t_s for s in steps] == [(2 * k + 1) * iv for k in range(len(steps))]
    assert all(s.heal_s == s.t_s + iv for s in steps)
    assert steps[-1].heal_s <= 60.0


@pytest.mark.parametrize("seed", range(25))
def test_the_default_mix_exercises_every_kind_in_60s(seed: int) -> None:
    """On 5 nodes without power-loss mounts every other kind happens in a 60 s
    run, whatever the seed."""
    assert {s.kind for s in _plan(seed)} == set(KINDS) - {POWER_LOSS}


def test_the_ring_is_skipped_on_3_nodes_with_a_note() -> None:
    """A majorities ring needs 5 nodes; on 3 the other kinds all happen."""
    sched = Schedule(1, _nodes(3), parse_mix(DEFAULT_MIX))
    assert any(n.startswith("ring skipped") for n in sched.notes)
    for seed in range(10):
        assert {s.kind for s in _plan(seed, n=3)} == set(KINDS) - {"ring", POWER_LOSS}


def test_power_loss_is_skipped_with_its_reason_unless_offered() -> None:
    """Without mounts power-loss is left out and the notes say why; offered
    on 3 nodes, every kind but the ring happens in 60 s, the schedules of
    the other kinds untouched when it is not offered."""
    sched = Schedule(1, _nodes(3), parse_mix(DEFAULT_MIX), unavailable={POWER_LOSS: "no mounts"})
    assert "power-loss skipped: no mounts" in sched.notes
    nodes = _nodes(3)
    for seed in range(10):
        steps = plan(seed, nodes, parse_mix(DEFAULT_MIX), _rotating_oracle(nodes), 60.0,
                     unavailable={})
        assert {s.kind for s in steps} == set(KINDS) - {"ring"}
    without = plan(4, nodes, parse_mix("all"), _rotating_oracle(nodes), 60.0)
    without_kinds = plan(4, nodes, parse_mix(",".join(k for k in KINDS if k != POWER_LOSS)),
                         _rotating_oracle(nodes), 60.0)
    assert [s.key() for s in without] == [s.key() for s in without_kinds]


def test_power_loss_cuts_any_subset_the_whole_cluster_too() -> None:
    """Its targets are dealt like the others' (the leader most), and include
    every node at once, as Jepsen's LazyFS nemesis does."""
    nodes = _nodes(3)
    steps = plan(2, nodes, parse_mix(POWER_LOSS), _rotating_oracle(nodes), 120.0, unavailable={})
    specs = Counter(s.spec for s in steps)
    assert set(specs) == {"leader", "successor", "one", "minority", "majority", "all"}, specs
    assert specs["leader"] == max(specs.values())
    assert all(len(s.targets) == 3 for s in steps if s.spec == "all")


@pytest.mark.parametrize("n", [3, 5])
def test_every_run_hits_the_leader(n: int) -> None:
    """Whatever the seed, several faults of a 60 s run are aimed at the leader."""
    for seed in range(50):
        hits = [s for s in _plan(seed, n=n) if s.hits_leader]
        assert len(hits) >= 3, (seed, [s.key() for s in _plan(seed, n=n)])


def test_weights_set_the_share_of_each_kind() -> None:
    """kill:3,pause gives three kills for every pause."""
    steps = _plan(9, mix="kill:3,pause", duration_s=400.0)
    c = Counter(s.kind for s in steps)
    assert c["kill"] == 3 * c["pause"], c


def test_targets_fit_the_cluster() -> None:
    """Minorities stay minorities, majorities majorities, and links join real nodes."""
    nodes = set(_nodes(5))
    for seed in range(30):
        for s in _plan(seed):
            assert set(s.targets) <= nodes
            assert all(a in nodes and b in nodes and a != b for a, b in s.links)
            if s.spec == "minority" and s.kind in ("kill", "pause", "stop", "isolate"):
                assert 1 <= len(s.targets) <= 2
            if s.spec == "majority" and s.kind in ("kill", "pause"):
                assert len(s.targets) == 3
            if s.kind in ("isolate", "partition", "bridge", "ring", "one-way"):
                assert s.links, s
            if s.kind == "netem":
                assert s.rates is not None and s.links


def test_no_leader_known_still_gives_a_fault() -> None:
    """With the oracle seeing no leader, a fault aimed at the leader hits some node."""
    steps = plan(4, _nodes(3), parse_mix("kill"), lambda t: View(), 20.0)
    assert all(len(s.targets) >= 1 and not s.hits_leader for s in steps)


@pytest.mark.parametrize("text, expect", [
    ("kill:2,partition,netem:0.5", {"kill": 2.0, "partition": 1.0, "netem": 0.5}),
    ("all,kill:3", {**dict.fromkeys(KINDS, 1.0), "kill": 3.0}),
    (" pause , stop ", {"pause": 1.0, "stop": 1.0}),
])
def test_mix_parsing(text: str, expect: dict[str, float]) -> None:
    """Kinds with optional weights; all is every kind; later terms override."""
    assert parse_mix(text) == expect


@pytest.mark.parametrize("text, message", [
    ("kill,fire", "unknown nemesis fire"),
    ("kill:x", "not a number"),
    ("kill:0", "above 0"),
    ("", "no nemesis given"),
])
def test_bad_mixes_are_refused(text: str, message: str) -> None:
    """A mix names only known kinds, with positive numeric weights."""
    with pytest.raises(ValueError, match=message):
        parse_mix(text)


def test_a_mix_the_cluster_cannot_run_is_refused() -> None:
    """Only a ring on 3 nodes leaves nothing to run: the reason is given."""
    with pytest.raises(ValueError, match="needs at least 5 nodes"):
        Schedule(1, _nodes(3), parse_mix("ring"))
