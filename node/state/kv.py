"""The key-value state machine applied from committed log entries: its
commands, client sessions (exactly-once), and the revisioned data they change
(node/state/mvcc.py, run by node/state/txn.py). Images: node/state/image.py.

No I/O, clocks or randomness: every replica that applies the same entries
reaches the same state, byte for byte.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from node.config import (
    HISTORY_MAX_BYTES,
    HISTORY_REVISIONS,
    MAX_OUTSTANDING_PER_SESSION,
    MAX_SESSIONS,
    SESSION_TIMEOUT_MS,
)
from node.raft.messages import U64
from node.state.image import (
    ImageError,
    KVImage,
    decode_image,
    encode_image,
    freeze,
    image_digest,
    image_encoder,
    thaw,
)
from node.state.index import prefix_end
from node.state.leases import LeaseTable
from node.state.mvcc import Mvcc
from node.state.ops import Append, Cas, Delete, DeleteRange, Key, Op, Put, Txn, Value
from node.state.sessions import Answer, KeptAnswer, Result, SessionTable, fingerprint
from node.state.txn import CAS_FAILED, VALUE_TOO_LARGE, end_leases, execute

__all__ = [
    "CAS_FAILED", "VALUE_TOO_LARGE", "Append", "Cas", "Delete", "DeleteRange", "ImageError",
    "KVImage", "Key", "Op", "Put", "Txn", "Value", "decode_image", "encode_image", "image_digest",
    "image_encoder",
]

# Codes in `Result.error`; clients match on them, so they never change.
BAD_COMMAND = "bad_command"
STALE_SEQUENCE = "stale_sequence"
SESSION_EXPIRED = "session_expired"
SEQUENCE_REUSED = "sequence_reused"
TOO_MANY_OUTSTANDING = "too_many_outstanding"

# Test-only switches that put old bugs back, so that `chaos run` can prove it
# finds them (docs/CHAOS.md, "Proving the runner finds bugs"). Never on unless
# the node process is started with RAFTCTL_TEST_UNSAFE_BUGS naming them.
# apply_unknown_sessions: a write whose session is unknown (evicted, expired)
# is applied as if its session were new, so a retry can be applied twice.
UNSAFE_APPLY_UNKNOWN_SESSIONS = "apply_unknown_sessions"
UNSAFE_BUGS = (UNSAFE_APPLY_UNKNOWN_SESSIONS,)
UNSAFE_BUGS_ENV = "RAFTCTL_TEST_UNSAFE_BUGS"


def parse_unsafe_bugs(text: str) -> frozenset[str]:
    """The bugs a comma-separated list names; ValueError on a name that is not
    one, so a typo never starts a node that believes it is testing."""
    bugs = frozenset(b.strip() for b in text.split(",") if b.strip())
    unknown = sorted(bugs - set(UNSAFE_BUGS))
    if unknown:
        raise ValueError(f"unknown bug {', '.join(unknown)}; the test-only bugs are "
                         f"{', '.join(UNSAFE_BUGS)} (unset {UNSAFE_BUGS_ENV} to run safely)")
    return bugs


# --- commands ---------------------------------------------------------------


class Write(msgspec.Struct, frozen=True, array_like=True, tag="w"):
    """Session `session`'s write number `seq` (thesis §6.3). The client needs
    no answer below `first_outstanding` any more. `op` stays encoded until
    it is applied: its bytes also identify it (a retry carries the same)."""

    session: U64
    seq: U64
    first_outstanding: U64
    op: msgspec.Raw


class RegisterSession(msgspec.Struct, frozen=True, array_like=True, tag="r"):
    """Open a session; its id is the index of this entry."""


class CloseSession(msgspec.Struct, frozen=True, array_like=True, tag="c"):
    """End `session`: its answers go, and its later writes are refused."""

    session: U64


class ExpireLeases(msgspec.Struct, frozen=True, array_like=True, tag="x"):
    """The leader's decision that leases `ids` expired (node/lessor.py): each
    that still exists ends, and every key attached to them goes, all at one
    revision. Needs no session: expiring an ended lease changes nothing."""

    ids: list[U64]


class CompactHistory(msgspec.Struct, frozen=True, array_like=True, tag="k"):
    """Forget the history before `revision` (node/state/mvcc.py). Needs no
    session: compacting again to where it already is changes nothing."""

    revision: U64


Body = Write | RegisterSession | CloseSession | CompactHistory | ExpireLeases

# The era of the commands this version writes. Revisions begin, on every
# replica alike, at the first command of this era a store applies: a store
# restored from an image of an earlier version, or replaying entries an
# earlier version wrote, holds keys whose revisions nobody knows, and where a
# replica's snapshot was taken decides which those are. The first entry
# written by this version is the same on every replica (docs/STORAGE.md).
ERA = 1


class Command(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A log entry's payload: `body`, stamped by the leader that proposed it
    with its clock (`time_ms`, ms of cluster time), by which every replica
    expires idle sessions the same way, and the `era` of the version that
    wrote it (0 in entries of earlier versions, which hold no such field)."""

    time_ms: U64
    body: Body
    era: int = 0


class Applied(msgspec.Struct, frozen=True, gc=False):
    """What applying one command did, for whoever waits on it: the write
    (`session`, `seq`) or the registration (`seq` 0; `session` is the new
    id) or closing (`seq` 0), its result, and the index at which the write
    was first applied (a retry's answer is the first one's). A Struct, not
    a dataclass: one is made per entry applied, on every replica."""

    session: int
    seq: int
    result: Result
    index: int
    # This entry ran the write (its first application). False for a retry
    # answered from the session, and for a refusal.
    executed: bool = False


T = TypeVar("T")


class CommandError(Exception):
    """The bytes are not one valid `Command`."""


_command_encoder = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(Command)
_op_decoder: msgspec.msgpack.Decoder[Op] = msgspec.msgpack.Decoder(Op)


def encode_command(cmd: Command) -> bytes:
    """The command as this version writes it: of its era (`ERA`)."""
    if cmd.era != ERA:
        cmd = Command(cmd.time_ms, cmd.body, ERA)
    return _command_encoder.encode(cmd)


def encode_op(op: Op) -> msgspec.Raw:
    """An operation as a `Write` carries it."""
    return msgspec.Raw(_command_encoder.encode(op))


def _decode(decoder: msgspec.msgpack.Decoder[T], data: bytes | memoryview | msgspec.Raw) -> T:
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise CommandError(str(e)) from None
    except Exception as e:  # the contract: only CommandError escapes
        raise CommandError(f"{type(e).__name__}: {e}") from None


def decode_command(data: bytes | memoryview) -> Command:
    return _decode(_command_decoder, data)


def decode_op(raw: msgspec.Raw) -> Op:
    return _decode(_op_decoder, raw)


# An answer keeps its write's bytes (the whole entry's, which they are a
# view of) instead of their fingerprint up to this size: a CRC-32 of a small
# write was a fifth of what its session cost an apply, and most answers are
# released unread. The price: a kept answer holds its entry's bytes alive,
# 84 bytes more than a fingerprinted answer (about 165) for a 16-byte
# operation, 253 more for a 185-byte one (tracemalloc), and on a leader up to
# half as much again (its encoder's buffers are larger than what they hold).
# Past the bound an idle session would hold a large value alive.
_KEEP_OP_BYTES = 192

_NOOP = Result(ok=True)
_BAD = Result(ok=False, error=BAD_COMMAND)
_STALE = Result(ok=False, error=STALE_SEQUENCE)
_EXPIRED = Result(ok=False, error=SESSION_EXPIRED)
_REUSED = Result(ok=False, error=SEQUENCE_REUSED)
_OUTSTANDING = Result(ok=False, error=TOO_MANY_OUTSTANDING)


# --- the state machine --------------------------------------------------------


class KVStore:
    """Applies committed commands in log order, each session's write at most
    once (thesis §6.3).

    The session and history settings are rules of the replicated state:
    every replica of a cluster must use the same, or their states part.
    """

    def __init__(self, *, session_timeout_ms: int = SESSION_TIMEOUT_MS,
                 max_sessions: int = MAX_SESSIONS,
                 max_outstanding: int = MAX_OUTSTANDING_PER_SESSION,
                 history_revisions: int = HISTORY_REVISIONS,
                 history_max_bytes: int = HISTORY_MAX_BYTES,
                 unsafe_bugs: frozenset[str] = frozenset()) -> None:
        self.mvcc = Mvcc(history_revisions=history_revisions,
                         history_max_bytes=history_max_bytes)
        self._apply_unknown_sessions = UNSAFE_APPLY_UNKNOWN_SESSIONS in unsafe_bugs
        self.sessions = SessionTable(timeout_ms=session_timeout_ms, max_sessions=max_sessions,
                                     max_outstanding=max_outstanding)
        self.leases = LeaseTable()
        self._applied = 0

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def clock_ms(self) -> int:
        """The log's clock: the latest time a leader stamped on an applied entry."""
        return self.sessions.clock_ms

    @property
    def revision(self) -> int:
        """The store's revision (0: revisions have not begun)."""
        return self.mvcc.revision

    @property
    def compacted(self) -> int:
        """The oldest revision that can still be read at or watched from."""
        return self.mvcc.compacted

    def __len__(self) -> int:
        return len(self.mvcc)

    def get(self, key: str) -> bytes | None:
        rec = self.mvcc.get(key)
        return None if rec is None else rec.value

    def keys(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix`, sorted."""
        return list(self.mvcc.index.irange(prefix, prefix_end(prefix)))

    def apply(self, index: int, data: bytes) -> Applied | None:
        """Apply the entry at `index`. Empty `data` is a no-op entry (a new
        leader's, §5.4.2); bad data changes nothing but the applied index.
        Both answer None: nobody can wait on them. Only an out-of-order
        `index` raises."""
        if index <= self._applied:
            raise ValueError(f"entry {index} applied after entry {self._applied}")
        self._applied = index
        if not data:
            return None
        try:
            cmd = _command_decoder.decode(data)  # decode_command, inlined
        except Exception:  # any failure: bad data, which changes nothing
            return None
        if cmd.era and not self.mvcc.revision:
            self.mvcc.start_revisions()
        table = self.sessions
        table.advance(cmd.time_ms)
        body = cmd.body
        if isinstance(body, Write):
            return self._write(index, body)
        if isinstance(body, RegisterSession):
            table.register(index)
            return Applied(index, 0, _NOOP, index)
        if isinstance(body, CompactHistory):
            self.mvcc.compact(body.revision)
            return Applied(0, 0, Result(ok=True, revision=self.mvcc.revision), index)
        if isinstance(body, ExpireLeases):
            revision = end_leases(self.mvcc, self.leases, list(body.ids))
            return Applied(0, 0, Result(ok=True, revision=revision), index)
        table.close(body.session)
        return Applied(body.session, 0, _NOOP, index)

    def _write(self, index: int, w: Write) -> Applied:
        # Run for every write on every replica: the session's calls inlined.
        table = self.sessions
        seq = w.seq
        sess = table.heard(w.session)
        if sess is None and self._apply_unknown_sessions and w.session < index:
            # The old bug, on purpose: taken for a new session (an id below
            # `index` keeps the snapshot image valid), the retry runs again.
            sess = table.register(w.session)
        if sess is None:
            # Never applied: it may be the retry of a write applied before
            # the session expired (the client cannot tell, so it reports
            # the outcome as unknown).
            return Applied(w.session, seq, _EXPIRED, index)
        # A client cannot have its answer to `seq` and still wait for it.
        first = w.first_outstanding
        if first > seq:
            first = seq
        if first > sess.first_outstanding:
            sess.release_below(first)
        answers = sess.answers
        raw = w.op
        done = answers.get(seq)
        if done is not None:
            if done.fingerprinted() != fingerprint(raw):
                return Applied(w.session, seq, _REUSED, index)
            return Applied(w.session, seq, done.result, done.index)
        if seq < sess.first_outstanding:
            # Its answer was released: applied or not, it must not run now.
            return Applied(w.session, seq, _STALE, index)
        if seq >= sess.first_outstanding + table.max_outstanding:
            return Applied(w.session, seq, _OUTSTANDING, index)
        try:
            op = _op_decoder.decode(raw)
        except Exception:  # decode_op's contract: any failure is a bad command
            result = _BAD
        else:
            result = execute(self.mvcc, op, self.leases, index)
        if len(raw) <= _KEEP_OP_BYTES:
            answers[seq] = KeptAnswer(seq, index, 0, result, raw)
        else:
            answers[seq] = Answer(seq, index, fingerprint(raw), result)
        return Applied(w.session, seq, result, index, executed=True)

    def freeze(self) -> KVImage:
        """The current state as an image, in O(shards + chunks + sessions) time."""
        return freeze(self.mvcc, self._applied, self.sessions.clock_ms,
                      tuple(self.sessions.image()), tuple(self.leases.image()))

    def install(self, img: KVImage) -> None:
        """Replace the whole state by `img` (from `decode_image`)."""
        thaw(img, self.mvcc)
        self.sessions.load(img.clock_ms, img.sessions)
        self.leases.load(img.leases)
        self._applied = img.applied_index

    def restore(self, data: bytes | memoryview) -> None:
        """Replace the whole state by an encoded image; raise `ImageError`
        and change nothing if it is malformed."""
        self.install(decode_image(data))

    def digest(self) -> str:
        """Hex digest of data, sessions, leases, clock and applied index."""
        return image_digest(self.freeze())
