"""The parts the workloads are built from: value sizes and padded values,
the workload names and how clients are shared, the pacer's rate, and the
Jepsen shape of the new operations."""

from __future__ import annotations

import random
import threading
import time

import pytest

from chaos import jepsen_history
from chaos.linearizability import OK, UNKNOWN, WRITE
from chaos.values import CORRUPT, decode_value, encode_value, parse_size, parse_sizes
from chaos.workload import APPEND, OPEN_SESSION, READ_SET, OpRecord, Pacer, parse_set
from chaos.workload_mix import DEFAULT_WORKLOADS, parse_workloads, split_clients
from tests.chaos_runs import recorded_run


@pytest.mark.parametrize("text, n", [("100", 100), ("4KiB", 4096), ("1MiB", 1 << 20),
                                     ("2kB", 2000), ("1.5KiB", 1536)])
def test_sizes_take_units(text: str, n: int) -> None:
    """Sizes in bytes, KiB, MiB (and kB, MB)."""
    assert parse_size(text) == n


@pytest.mark.parametrize("text, why", [("2MiB", "1 MiB"), ("0", "1 B"), ("4 parsecs", "size"),
                                       ("1KiB:x", "not a number"), ("", "no value size")])
def test_bad_sizes_are_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_sizes(text)


def test_a_size_mix_draws_by_weight() -> None:
    """`32:9,1MiB:1` gives about one large value in ten."""
    mix = parse_sizes("32:9,1MiB:1")
    rng = random.Random(1)
    draws = [mix.draw(rng) for _ in range(2000)]
    assert set(draws) == {32, 1 << 20}
    assert 150 < draws.count(1 << 20) < 250
    assert mix.describe() == "32B 90%, 1MiB 10%"


def test_padded_values_carry_their_name_and_show_corruption() -> None:
    """A value is its name padded to the size; a read gives the name back,
    and a value whose padding changed reads as a name nobody wrote."""
    raw = encode_value("c3-17", 4096)
    assert len(raw) == 4096 and decode_value(raw) == "c3-17"
    assert encode_value("c3-17", 3) == b"c3-17" and decode_value(b"c3-17") == "c3-17"
    bad = raw[:-1] + (b"x" if raw[-1:] != b"x" else b"y")
    assert decode_value(bad) == "c3-17" + CORRUPT
    assert decode_value(None) is None


def test_workload_names_and_shares() -> None:
    """The default is register, set and churn; all adds txn and lock (after
    any named first); clients go 1 : 2 : 1, at least one each."""
    assert parse_workloads(DEFAULT_WORKLOADS) == ["register", "set", "churn"]
    assert parse_workloads(" set, register,set") == ["set", "register"]
    assert parse_workloads("all") == ["register", "set", "churn", "txn", "lock"]
    assert parse_workloads("lock,all") == ["lock", "register", "set", "churn", "txn"]
    with pytest.raises(ValueError, match="unknown workload bank; choose from register"):
        parse_workloads("register,bank")
    assert split_clients(["register", "set", "churn"], 24) == {"register": 6, "set": 12,
                                                               "churn": 6}
    assert split_clients(["register", "set", "churn"], 3) == {"register": 1, "set": 1,
                                                              "churn": 1}
    assert sum(split_clients(["register", "set", "churn"], 301).values()) == 301
    with pytest.raises(ValueError, match="at least 2 clients"):
        split_clients(["register", "set"], 1)


def test_the_pacer_bounds_all_clients_together() -> None:
    """Eight threads sharing a pacer of 200/s start about 200 operations in a second."""
    pacer, stop, started = Pacer(200.0), threading.Event(), []

    def client() -> None:
        while pacer.wait(stop):
            started.append(time.monotonic())

    threads = [threading.Thread(target=client) for _ in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(1.0)  # the measured interval, not a synchronisation
    stop.set()
    for t in threads:
        t.join(2)
    in_first_second = sum(1 for t in started if t - t0 < 1.0)
    assert 100 <= in_first_second <= 202, in_first_second  # at most 200 and one to start


def test_a_set_value_reads_back_in_order_with_duplicates() -> None:
    assert parse_set(b"a-1,b-2,a-1,") == ["a-1", "b-2", "a-1"]
    assert parse_set(None) == [] and parse_set(b"") == []


def test_new_operations_have_jepsens_shape() -> None:
    """append is [key element] with its session and seq, read-set [key
    [elements...]] (nil when invoked), open-session the session, and a
    padded write carries its size."""
    rec = recorded_run()
    pos = max(o.complete for o in rec.ops)
    extra = [
        OpRecord(client="s1.1", kind=OPEN_SESSION, key="", value=None, invoke=pos + 1,
                 complete=pos + 2, invoke_s=9.6, complete_s=9.61, outcome=OK, session=40),
        OpRecord(client="s1.1", kind=APPEND, key="s0", value="s1.1-1", invoke=pos + 3,
                 complete=pos + 4, invoke_s=9.62, complete_s=9.63, outcome=UNKNOWN,
                 session=40, seq=1, error="timeout"),
        OpRecord(client="final", kind=READ_SET, key="s0", value=None, invoke=pos + 5,
                 complete=pos + 6, invoke_s=9.7, complete_s=9.71, outcome=OK,
                 elements=["s1.1-1"]),
        OpRecord(client="c9", kind=WRITE, key="k", value="c9-1", invoke=pos + 7,
                 complete=pos + 8, invoke_s=9.72, complete_s=9.73, outcome=OK, size=4096),
    ]
    rec.ops += extra
    lines = jepsen_history.history_ops(rec)
    by_f = {(ln["f"], ln["type"]): ln for ln in lines}
    assert by_f[(OPEN_SESSION, "invoke")]["value"] is None
    assert by_f[(OPEN_SESSION, "ok")]["value"] == 40
    app = by_f[(APPEND, "info")]
    assert app["value"] == ["s0", "s1.1-1"] and (app["session"], app["seq"]) == (40, 1)
    assert by_f[(READ_SET, "invoke")]["value"] == ["s0", None]
    assert by_f[(READ_SET, "ok")]["value"] == ["s0", ["s1.1-1"]]
    assert [ln["size"] for ln in lines if ln.get("f") == WRITE and ln.get("size")] == [4096] * 2
    edn = jepsen_history.to_edn(lines)
    assert ':f :read-set, :value ["s0" ["s1.1-1"]]' in edn
    assert ":f :append, :value [\"s0\" \"s1.1-1\"]" in edn
