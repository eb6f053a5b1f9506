"""The per-link fault filter: each rule kind, ordering under delay and reorder,
one-way blocks, healing, determinism. A fake transport and clock, no sleeps."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from typing import Any

import msgspec
import pytest

from node.config import LINK_REORDER_HOLD_MS
from node.transport.links import FaultyTransport, LinkFilter, LinkRule

N = 10_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class FakeInner:
    """Records what leaves and hands out what the test puts in `inbox`."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.stats: dict[str, int] = {"sent": 0, "received": 0, "dropped_send": 0, "bad_peer": 0}
        self.sent: list[tuple[str, bytes, float]] = []
        self.inbox: list[tuple[str, bytes]] = []
        self._clock = clock
        self.closed = False
        self.addrs: dict[str, Any] = {}

    def poll_sockets(self) -> list[Any]:
        return ["sock"]

    def peers(self) -> dict[str, Any]:
        return dict(self.addrs)

    def set_peer(self, peer: str, addr: Any) -> None:
        self.addrs[peer] = addr

    def remove_peer(self, peer: str) -> None:
        self.addrs.pop(peer, None)

    def send(self, dst: str, data: bytes) -> bool:
        self.sent.append((dst, data, self._clock() if self._clock else 0.0))
        self.stats["sent"] += 1
        return True

    def receive(self) -> list[tuple[str, bytes]]:
        out, self.inbox = self.inbox, []
        return out

    def next_deadline_ms(self) -> float | None:
        return None

    def close(self) -> None:
        self.closed = True


def make(
    rules: dict[str, LinkRule], seed: int = 7
) -> tuple[FaultyTransport, FakeInner, LinkFilter, FakeClock]:
    clock = FakeClock()
    flt = LinkFilter(random.Random(seed), clock)
    flt.set_rules(rules)
    inner = FakeInner(clock)
    return FaultyTransport(inner, flt), inner, flt, clock


def run_until_idle(t: FaultyTransport, clock: FakeClock, step_ms: float = 1.0) -> None:
    """Advance the fake clock deadline by deadline until nothing is held."""
    while (due := t.next_deadline_ms()) is not None:
        clock.now = max(clock.now + step_ms, due)
        t.flush_due()


def payloads(inner: FakeInner, dst: str | None = None) -> list[bytes]:
    return [d for p, d, _ in inner.sent if dst is None or p == dst]


def test_no_rules_is_a_pass_through_that_never_reads_the_clock() -> None:
    """With no rule in force, send and receive go straight to the inner transport."""

    def clock() -> float:
        raise AssertionError("the fast path read the clock")

    inner = FakeInner()
    t = FaultyTransport(inner, LinkFilter(random.Random(1), clock))
    inner.inbox = [("n2", b"in")]
    assert t.send("n2", b"out") is True
    assert t.receive() == [("n2", b"in")]
    assert payloads(inner) == [b"out"]
    assert t.next_deadline_ms() is None
    assert t.poll_sockets() == ["sock"]
    assert t.stats is inner.stats
    assert t.stats["dropped_by_filter"] == t.stats["delayed"] == 0


def test_rule_for_one_peer_leaves_other_peers_alone() -> None:
    """A rule applies to its own peer's link only."""
    t, inner, _, _ = make({"n2": LinkRule(block_out=True, block_in=True)})
    t.send("n3", b"a")
    inner.inbox = [("n3", b"b")]
    assert t.receive() == [("n3", b"b")]
    assert payloads(inner) == [b"a"]


def test_block_out_drops_outgoing_but_not_incoming() -> None:
    """block_out loses every message to the peer, still delivers the peer's messages."""
    t, inner, _, _ = make({"n2": LinkRule(block_out=True)})
    assert all(t.send("n2", b"x%d" % i) for i in range(100))
    inner.inbox = [("n2", b"hello")]
    assert payloads(inner) == []
    assert t.receive() == [("n2", b"hello")]
    assert t.stats["dropped_by_filter"] == 100
    assert t.stats["dropped_by_filter_in"] == 0


def test_block_in_drops_incoming_but_not_outgoing() -> None:
    """block_in loses every message from the peer, still sends to it."""
    t, inner, _, _ = make({"n2": LinkRule(block_in=True)})
    inner.inbox = [("n2", b"a"), ("n3", b"b"), ("n2", b"c")]
    assert t.receive() == [("n3", b"b")]
    t.send("n2", b"out")
    assert payloads(inner) == [b"out"]
    assert t.stats["dropped_by_filter_in"] == 2


def test_loss_drops_about_that_fraction_on_the_way_out() -> None:
    """loss=0.3 drops 30% (±3%) of N outgoing messages."""
    t, inner, _, _ = make({"n2": LinkRule(loss=0.3)})
    for i in range(N):
        t.send("n2", b"%d" % i)
    assert 0.27 * N <= N - len(inner.sent) <= 0.33 * N
    assert t.stats["dropped_by_filter"] == N - len(inner.sent)


def test_loss_drops_about_that_fraction_on_the_way_in() -> None:
    """loss=0.3 also drops 30% (±3%) of N incoming messages from that peer."""
    t, inner, _, _ = make({"n2": LinkRule(loss=0.3)})
    inner.inbox = [("n2", b"%d" % i) for i in range(N)]
    got = t.receive()
    assert 0.27 * N <= N - len(got) <= 0.33 * N
    assert t.stats["dropped_by_filter_in"] == N - len(got)


def test_duplicate_sends_about_that_fraction_twice() -> None:
    """duplicate=0.2 sends 20% (±3%) of N messages twice and the rest once."""
    t, inner, _, _ = make({"n2": LinkRule(duplicate=0.2)})
    for i in range(N):
        t.send("n2", b"%d" % i)
    extra = len(inner.sent) - N
    assert 0.17 * N <= extra <= 0.23 * N
    assert t.stats["duplicated"] == extra
    assert set(Counter(payloads(inner)).values()) == {1, 2}


def test_delay_holds_messages_until_due() -> None:
    """delay_ms=50 keeps a message back exactly 50 ms and announces the deadline."""
    t, inner, _, clock = make({"n2": LinkRule(delay_ms=50)})
    start = clock.now
    assert t.send("n2", b"m") is True
    assert inner.sent == []
    assert t.next_deadline_ms() == start + 50
    clock.now = start + 49.9
    assert t.receive() == [] and inner.sent == []
    clock.now = start + 50
    t.receive()
    assert inner.sent == [("n2", b"m", start + 50)]
    assert t.next_deadline_ms() is None
    assert t.stats["delayed"] == 1


def test_send_flushes_what_is_due() -> None:
    """A send also hands over earlier messages that have come due."""
    t, inner, flt, clock = make({"n2": LinkRule(delay_ms=10)})
    t.send("n2", b"first")
    clock.now += 10
    flt.clear()
    t.send("n3", b"second")
    assert payloads(inner) == [b"first", b"second"]


def test_delay_with_jitter_varies_latency_but_keeps_order() -> None:
    """delay 20±15 ms spreads latencies over the range yet never reorders."""
    t, inner, _, clock = make({"n2": LinkRule(delay_ms=20, jitter_ms=15)})
    sent_at: dict[bytes, float] = {}
    for i in range(2_000):
        sent_at[b"%d" % i] = clock.now
        t.send("n2", b"%d" % i)
        clock.now += 1.0
        t.flush_due()
    run_until_idle(t, clock)
    assert payloads(inner) == [b"%d" % i for i in range(2_000)]
    latency = [at - sent_at[d] for _, d, at in inner.sent]
    assert min(latency) >= 5.0
    assert max(latency) - min(latency) > 20.0, "jitter did not spread latencies"


def test_reorder_lets_later_messages_pass() -> None:
    """reorder=0.1 holds about 10% back so that later messages overtake them; none is lost."""
    t, inner, _, clock = make({"n2": LinkRule(reorder=0.1)})
    start, n = clock.now, 2_000
    for i in range(n):
        t.send("n2", i.to_bytes(4, "big"))
        clock.now += 1.0
        t.flush_due()
    run_until_idle(t, clock)
    order = [int.from_bytes(d, "big") for d in payloads(inner)]
    assert sorted(order) == list(range(n))
    overtaken = sum(1 for a, b in itertools.pairwise(order) if a > b)
    assert 0.07 * n <= t.stats["reordered"] <= 0.13 * n
    assert overtaken >= 0.07 * n
    held = [at - (start + i) for i, (_, _, at) in zip(order, inner.sent, strict=True)]
    assert max(held) <= 2 * LINK_REORDER_HOLD_MS + 1


def test_delay_without_reorder_keeps_fifo_with_equal_due_times() -> None:
    """Messages sent at the same instant with the same delay leave in send order."""
    t, inner, _, clock = make({"n2": LinkRule(delay_ms=5)})
    for i in range(100):
        t.send("n2", b"%03d" % i)
    clock.now += 5
    t.flush_due()
    assert payloads(inner) == [b"%03d" % i for i in range(100)]


def test_block_out_loses_messages_still_in_flight() -> None:
    """Cutting a link drops the delayed messages that had not left yet."""
    t, inner, flt, clock = make({"n2": LinkRule(delay_ms=30)})
    t.send("n2", b"in-flight")
    flt.set_rules({"n2": LinkRule(block_out=True)})
    clock.now += 30
    t.flush_due()
    assert inner.sent == []
    assert t.stats["dropped_by_filter"] == 1
    assert t.next_deadline_ms() is None


def test_clear_heals_every_link() -> None:
    """After clear() no rule remains and every message passes at once."""
    t, inner, flt, _ = make({"n2": LinkRule(block_out=True), "n3": LinkRule(loss=1.0)})
    flt.clear()
    assert flt.rules() == {} and not flt.active
    t.send("n2", b"a")
    t.send("n3", b"b")
    inner.inbox = [("n3", b"c")]
    assert payloads(inner) == [b"a", b"b"]
    assert t.receive() == [("n3", b"c")]


def test_set_rules_replaces_all_rules_and_skips_noop_ones() -> None:
    """set_rules replaces the whole map; a rule with every fault off is not kept."""
    _, _, flt, _ = make({"n2": LinkRule(block_out=True)})
    flt.set_rules({"n3": LinkRule(loss=0.5), "n4": LinkRule()})
    assert flt.rules() == {"n3": LinkRule(loss=0.5)}


def test_same_seed_same_faults() -> None:
    """Two filters with the same seed and clock make identical decisions."""
    rule = LinkRule(loss=0.2, duplicate=0.2, delay_ms=5, jitter_ms=5, reorder=0.2)
    traces = []
    for _ in range(2):
        t, inner, _, clock = make({"n2": rule}, seed=42)
        for i in range(500):
            t.send("n2", b"%d" % i)
            clock.now += 0.5
            t.flush_due()
        run_until_idle(t, clock)
        traces.append(inner.sent)
    assert traces[0] == traces[1]
    t, inner, _, clock = make({"n2": rule}, seed=43)
    for i in range(500):
        t.send("n2", b"%d" % i)
    run_until_idle(t, clock)
    assert inner.sent != traces[0]


def test_next_deadline_is_the_earliest_held_message() -> None:
    """next_deadline_ms is the due time of the earliest held message across peers."""
    t, _, _, clock = make({"n2": LinkRule(delay_ms=40), "n3": LinkRule(delay_ms=10)})
    t.send("n2", b"a")
    t.send("n3", b"b")
    assert t.next_deadline_ms() == clock.now + 10


def test_close_discards_held_messages_and_closes_inner() -> None:
    """close() forgets held messages and closes the inner transport."""
    t, inner, _, _ = make({"n2": LinkRule(delay_ms=40)})
    t.send("n2", b"a")
    t.close()
    assert inner.closed and t.next_deadline_ms() is None


def test_removing_a_peer_drops_what_was_held_for_it() -> None:
    """A peer that left the configuration gets nothing more, not even what
    a delay still held for it; other peers' held messages stay."""
    t, inner, _, clock = make({"n2": LinkRule(delay_ms=40), "n3": LinkRule(delay_ms=40)})
    t.set_peer("n2", "addr-2")
    assert inner.peers() == {"n2": "addr-2"}
    t.send("n2", b"a")
    t.send("n3", b"b")
    t.remove_peer("n2")
    assert inner.peers() == {}
    clock.now += 40
    t.receive()
    assert [(d, m) for d, m, _ in inner.sent] == [("n3", b"b")]


def test_link_rules_round_trip_as_json_and_msgpack() -> None:
    """A rule map survives JSON and msgpack, omitted fields meaning off."""
    rules = {"n2": LinkRule(block_out=True, delay_ms=12.5, reorder=0.25)}
    for enc, dec in ((msgspec.json.encode, msgspec.json.decode),
                     (msgspec.msgpack.encode, msgspec.msgpack.decode)):
        assert dec(enc(rules), type=dict[str, LinkRule]) == rules
    assert msgspec.json.decode(b'{"n2": {"loss": 0.5}}', type=dict[str, LinkRule]) == {
        "n2": LinkRule(loss=0.5)
    }


@pytest.mark.parametrize(
    "doc",
    [b'{"loss": 1.5}', b'{"duplicate": -0.1}', b'{"delay_ms": -1}', b'{"jitter_ms": 1e999}',
     b'{"lose": 0.5}', b'{"block_out": "yes"}'],
)
def test_bad_link_rules_are_refused(doc: bytes) -> None:
    """Out-of-range, mistyped or unknown fields fail to decode with a clear error."""
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(doc, type=LinkRule)


def test_bad_link_rule_cannot_be_constructed() -> None:
    """Building a rule with a probability above 1 raises ValueError."""
    with pytest.raises(ValueError, match="loss"):
        LinkRule(loss=2.0)
