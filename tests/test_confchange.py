"""Computing a configuration from a change (node/raft/confchange.py) and the
configurations of a log (node/raft/membership.py), table by table: every
change goes through C_old,new, an empty one leaves it, and what a
configuration cannot take is refused with the reason."""

from __future__ import annotations

import pytest

from node.raft.confchange import (
    ConfChangeError,
    apply_change,
    decode_change,
    describe_change,
    describe_conf,
    encode_change,
    enter_joint,
    initial,
    leave_joint,
)
from node.raft.log import RaftLog
from node.raft.membership import Membership
from node.raft.messages import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    SnapshotMeta,
)

_TYPES = {"l": ConfChangeType.ADD_LEARNER, "v": ConfChangeType.ADD_VOTER,
          "r": ConfChangeType.REMOVE}


def _cc(text: str) -> ConfChange:
    """`l4 v5 r2` -> add learner n4, promote n5, remove n2 (learners get an address)."""
    out = []
    for word in text.split():
        t, n = _TYPES[word[0]], f"n{word[1:]}"
        out.append(ConfChangeSingle(t, n, f"addr-{n}" if t is ConfChangeType.ADD_LEARNER else ""))
    return ConfChange(tuple(out))


def _conf(voters: str, learners: str = "", outgoing: str = "") -> ConfState:
    def ids(t: str) -> tuple[str, ...]:
        return tuple(sorted(f"n{x}" for x in t.split()))

    return ConfState(voters=ids(voters), learners=ids(learners), voters_outgoing=ids(outgoing))


def _strip(c: ConfState) -> ConfState:
    return ConfState(voters=c.voters, learners=c.learners, voters_outgoing=c.voters_outgoing)


@pytest.mark.parametrize(("start", "change", "want"), [
    # Each change enters the joint configuration: the old voters go outgoing.
    (_conf("1 2 3"), "l4", _conf("1 2 3", "4", "1 2 3")),
    (_conf("1 2 3", "4"), "v4", _conf("1 2 3 4", "", "1 2 3")),
    (_conf("1 2 3"), "r3", _conf("1 2", "", "1 2 3")),
    (_conf("1 2 3", "4"), "r4", _conf("1 2 3", "", "1 2 3")),
    # Several members at once (ConfChangeV2): replace 3 by 4.
    (_conf("1 2 3", "4"), "r3 v4", _conf("1 2 4", "", "1 2 3")),
    (_conf("1 2 3", "4 5"), "v4 v5", _conf("1 2 3 4 5", "", "1 2 3")),
    (_conf("1 2 3 4 5"), "r4 r5", _conf("1 2 3", "", "1 2 3 4 5")),
    (_conf("1"), "l2 l3", _conf("1", "2 3", "1")),
])
def test_enter_joint(start: ConfState, change: str, want: ConfState) -> None:
    """A change makes C_old,new: the new voters and learners, the old voters outgoing."""
    assert _strip(apply_change(start, _cc(change))) == want


@pytest.mark.parametrize(("start", "change", "error"), [
    (_conf("1 2 3", "", "1 2"), "l4", "still in progress"),
    (_conf("1 2 3"), "", "nothing to leave"),
    (_conf("1 2 3"), "l3", "n3 is already a voter"),
    (_conf("1 2 3", "4"), "l4", "n4 is already a learner"),
    (_conf("1 2 3"), "v3", "n3 is already a voter"),
    (_conf("1 2 3"), "v4", "joins as a learner first"),
    (_conf("1 2 3"), "r4", "n4 is not a member"),
    (_conf("1"), "r1", "remove every voter"),
    (_conf("1 2", "3"), "r1 r2", "remove every voter"),
    (_conf("1 2 3", "4"), "v4 r4", "named more than once"),
])
def test_changes_the_configuration_cannot_take_are_refused(start: ConfState, change: str,
                                                           error: str) -> None:
    """Refused with a sentence that names the reason."""
    with pytest.raises(ConfChangeError, match=error):
        apply_change(start, _cc(change))


def test_enter_joint_with_no_change_is_refused() -> None:
    """A joint configuration is entered to change something."""
    with pytest.raises(ConfChangeError, match="at least one"):
        enter_joint(_conf("1 2 3"), [])


def test_leave_joint_keeps_the_incoming_half_and_learners() -> None:
    """C_new is the incoming voters and the learners; the outgoing half goes."""
    joint = apply_change(initial(["n1", "n2", "n3"], {"n1": "a1", "n2": "a2", "n3": "a3"}),
                         _cc("r3 l4"))
    assert joint.is_joint() and joint.addr("n3") == "a3" and joint.addr("n4") == "addr-n4"
    new = leave_joint(joint)
    assert _strip(new) == _conf("1 2", "4")
    assert not new.is_joint()


def test_addresses_follow_the_members() -> None:
    """A member's address comes with its addition and goes when it leaves
    both halves; the outgoing voters keep theirs while joint."""
    c0 = initial(["n1", "n2"], {"n1": "a1", "n2": "a2"})
    c1 = leave_joint(apply_change(c0, _cc("l3")))
    assert dict(c1.addrs) == {"n1": "a1", "n2": "a2", "n3": "addr-n3"}
    c2 = apply_change(c1, _cc("r2"))
    assert c2.addr("n2") == "a2"
    c3 = leave_joint(c2)
    assert c3.addr("n2") == "" and set(dict(c3.addrs)) == {"n1", "n3"}
    assert c3.members() == {"n1", "n3"} and c3.is_voter("n1") and not c3.is_voter("n3")


def test_a_change_round_trips_through_its_entry_data() -> None:
    """What a CONF_CHANGE entry holds decodes to the same change; garbage is refused."""
    cc = _cc("r3 v4")
    assert decode_change(encode_change(cc)) == cc
    assert describe_change(cc) == "remove n3, promote n4"
    assert describe_change(ConfChange()) == "leave joint"
    with pytest.raises(ConfChangeError, match="not a configuration change"):
        decode_change(b"\xff\x00")
    assert describe_conf(_conf("1 2", "4", "1 2 3")) == "voters n1,n2 learners n4 outgoing n1,n2,n3"


# --- the configurations of a log -------------------------------------------------


def _entry(index: int, term: int, change: str | None = None) -> Entry:
    if change is None:
        return Entry(term, index, EntryKind.NORMAL, b"x")
    return Entry(term, index, EntryKind.CONF_CHANGE, encode_change(_cc(change)))


def test_configuration_takes_effect_when_appended() -> None:
    """The latest configuration in the log is in force, committed or not
    (thesis §4.1); `at` answers for any index from the log's start."""
    base = initial(["n1", "n2", "n3"])
    m = Membership(SnapshotMeta(), base, [_entry(1, 1), _entry(2, 1, "l4")])
    assert m.index == 2 and m.conf.learners == ("n4",) and m.conf.is_joint()
    assert m.appended([_entry(3, 1, ""), _entry(4, 1)])
    assert m.index == 3 and not m.conf.is_joint()
    assert m.at(1) == base and m.at(2).is_joint() and m.at(4) == m.conf


def test_truncating_a_configuration_entry_undoes_it() -> None:
    """A follower whose uncommitted C_old,new is overwritten by a new
    leader's entries goes back to the configuration before it (§5.3)."""
    base = initial(["n1", "n2", "n3"])
    log = RaftLog(SnapshotMeta(), [_entry(1, 1), _entry(2, 1, "r3")], 1, 0)
    m = Membership(SnapshotMeta(), base, log.entries)
    assert m.conf.is_joint()
    new = [_entry(2, 2), _entry(3, 2)]
    assert log.maybe_append(1, 1, 1, new) == 3
    assert m.synced(log, new)
    assert m.conf == base and m.index == 0


def test_compaction_keeps_the_configuration_in_force_at_the_log_start() -> None:
    """Points before the log's new start go, but the one in force there stays."""
    base = initial(["n1"])
    m = Membership(SnapshotMeta(), base, [_entry(2, 1, "l2"), _entry(3, 1, ""),
                                          _entry(6, 1, "v2")])
    m.compacted(4)
    assert [p.index for p in m.points()] == [3, 6]
    assert m.at(4).learners == ("n2",)
    with pytest.raises(IndexError):
        m.at(2)


def test_a_snapshot_brings_its_configuration() -> None:
    """A node that installs a snapshot takes the configuration recorded in
    it, then any configuration entry it keeps after it; a snapshot without
    one (recorded before membership changes existed) means the initial one."""
    base = initial(["n1", "n2", "n3"])
    snap_conf = leave_joint(apply_change(base, _cc("l4")))
    log = RaftLog(SnapshotMeta(), [], 0, 0)
    m = Membership(SnapshotMeta(), base, [])
    meta = SnapshotMeta(10, 2, snap_conf)
    log.restore(SnapshotMeta(10, 2))
    assert m.restored(meta, base, log)
    assert m.conf == snap_conf and m.index == 10
    assert not m.restored(SnapshotMeta(10, 2), snap_conf, log)
