"""The key-value state machine applied from committed log entries, its commands,
client sessions (exactly-once) and snapshot images.

No I/O, clocks or randomness: every replica that applies the same entries
reaches the same state, byte for byte.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, TypeVar

import msgspec

from node.config import (
    KV_IMAGE_CHUNK_BYTES,
    MAX_KEY_BYTES,
    MAX_OUTSTANDING_PER_SESSION,
    MAX_SESSIONS,
    MAX_VALUE_BYTES,
    SESSION_TIMEOUT_MS,
)
from node.raft.messages import U64
from node.state.sessions import Answer, Result, SessionImage, SessionTable, check_images

# Codes in `Result.error`; clients match on them, so they never change.
BAD_COMMAND = "bad_command"
STALE_SEQUENCE = "stale_sequence"
CAS_FAILED = "cas_failed"
SESSION_EXPIRED = "session_expired"
SEQUENCE_REUSED = "sequence_reused"
TOO_MANY_OUTSTANDING = "too_many_outstanding"
VALUE_TOO_LARGE = "too_large"

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

# A key is at most MAX_KEY_BYTES of UTF-8; a character is at least one byte, so
# the decoder can reject longer strings before `_check_key` counts bytes.
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_BYTES)]
Value = Annotated[bytes, msgspec.Meta(max_length=MAX_VALUE_BYTES)]


def _check_key(key: str) -> None:
    # 4 bytes is the longest UTF-8 character: shorter keys need no encoding.
    if not key or (len(key) * 4 > MAX_KEY_BYTES and len(key.encode()) > MAX_KEY_BYTES):
        raise ValueError(f"a key must be 1 to {MAX_KEY_BYTES} bytes of UTF-8")


def _check_value(value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"a value must be at most {MAX_VALUE_BYTES} bytes")


# --- commands ---------------------------------------------------------------


class Put(msgspec.Struct, frozen=True, array_like=True, tag_field="op", tag="put"):
    """Set `key` to `value`; with `prev`, answer the value it replaced."""

    key: Key
    value: Value
    prev: bool = False

    def __post_init__(self) -> None:
        _check_key(self.key)
        _check_value(self.value)


class Delete(msgspec.Struct, frozen=True, array_like=True, tag_field="op", tag="delete"):
    """Remove `key` (absent is fine); with `prev`, answer the value it had."""

    key: Key
    prev: bool = False

    def __post_init__(self) -> None:
        _check_key(self.key)


class Cas(msgspec.Struct, frozen=True, array_like=True, tag_field="op", tag="cas"):
    """Set `key` to `value` only if it now holds `expected` (None: is absent)."""

    key: Key
    expected: Value | None
    value: Value

    def __post_init__(self) -> None:
        _check_key(self.key)
        _check_value(self.value)
        if self.expected is not None:
            _check_value(self.expected)


class Append(msgspec.Struct, frozen=True, array_like=True, tag_field="op", tag="append"):
    """Add `value` to the end of `key`'s value (absent: empty). Not
    idempotent, so a write applied twice shows: what the set workload of
    `chaos run` relies on."""

    key: Key
    value: Value

    def __post_init__(self) -> None:
        _check_key(self.key)
        _check_value(self.value)


Op = Put | Delete | Cas | Append


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


Body = Write | RegisterSession | CloseSession


class Command(msgspec.Struct, frozen=True, array_like=True):
    """A log entry's payload: `body`, stamped by the leader that proposed it
    with its clock (`time_ms`, ms of cluster time), by which every replica
    expires idle sessions the same way."""

    time_ms: U64
    body: Body


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one command did, for whoever waits on it: the write
    (`session`, `seq`) or the registration (`seq` 0; `session` is the new
    id) or closing (`seq` 0), its result, and the index at which the write
    was first applied (a retry's answer is the first one's)."""

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


def fingerprint(raw: msgspec.Raw) -> int:
    """What tells a retry of a write from another write under the same seq:
    the length and CRC-32 of the operation's bytes."""
    data = memoryview(raw)
    return (len(data) << 32) | zlib.crc32(data)


_NOOP = Result(ok=True)
_BAD = Result(ok=False, error=BAD_COMMAND)
_STALE = Result(ok=False, error=STALE_SEQUENCE)
_EXPIRED = Result(ok=False, error=SESSION_EXPIRED)
_REUSED = Result(ok=False, error=SEQUENCE_REUSED)
_OUTSTANDING = Result(ok=False, error=TOO_MANY_OUTSTANDING)
_TOO_LARGE = Result(ok=False, error=VALUE_TOO_LARGE)


# --- the data, copy-on-write in shards ----------------------------------------

# The keys are spread over this many dicts by a hash that is the same in every
# process (str hashes are salted per process). Part of the image format: the
# canonical order of keys is by shard, then by insertion within a shard.
# After a freeze, one batch of writes to random keys touches most shards and
# copies each: with 256 shards and 300k keys that was the whole store (~150 ms
# on the loop thread, past an election timeout under load); with 4096, a
# batch of a few hundred writes copies a tenth of it.
_SHARDS = 4096


# Never written: a store's shards start as this one dict, copied on first write.
_EMPTY: dict[str, bytes] = {}


def _shard_of(key: str) -> int:
    # Valid keys hold no surrogates; "surrogatepass" only spares `get` an error.
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % _SHARDS


class _CowMap:
    """A str -> bytes map whose `freeze` is O(shards), not O(keys): a frozen
    shard is shared with the image and copied on its first write after that
    (about keys/_SHARDS entries), so no single call on the loop thread pays
    for copying the whole store."""

    def __init__(self, shards: tuple[dict[str, bytes], ...] | None = None) -> None:
        if shards is not None and len(shards) != _SHARDS:
            raise ValueError(f"an image has {_SHARDS} shards, not {len(shards)}")
        if shards is None:
            # One empty dict shared by every shard until its first write.
            shards = (_EMPTY,) * _SHARDS
        self._shards = list(shards)
        # True where the shard dict is also referenced by an image (or is _EMPTY).
        self._shared = [True] * _SHARDS
        self._len = sum(map(len, self._shards))

    def __len__(self) -> int:
        return self._len

    def get(self, key: str) -> bytes | None:
        return self._shards[_shard_of(key)].get(key)

    def _writable(self, i: int) -> dict[str, bytes]:
        if self._shared[i]:
            self._shards[i] = self._shards[i].copy()
            self._shared[i] = False
        return self._shards[i]

    def put(self, key: str, value: bytes) -> bytes | None:
        shard = self._writable(_shard_of(key))
        prev = shard.get(key)
        shard[key] = value
        if prev is None:
            self._len += 1
        return prev

    def delete(self, key: str) -> bytes | None:
        i = _shard_of(key)
        if key not in self._shards[i]:
            return None
        self._len -= 1
        return self._writable(i).pop(key)

    def items(self) -> Iterable[tuple[str, bytes]]:
        return itertools.chain.from_iterable(s.items() for s in self._shards)

    def freeze(self) -> tuple[dict[str, bytes], ...]:
        self._shared = [True] * _SHARDS
        return tuple(self._shards)


# --- images -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KVImage:
    """The whole state at `applied_index`. Shares its dicts with the store it
    came from, which copies them before writing: never mutate an image."""

    applied_index: int
    shards: tuple[dict[str, bytes], ...]
    # The log's clock, and the sessions, oldest activity first.
    clock_ms: int
    sessions: tuple[SessionImage, ...]

    def __len__(self) -> int:
        return sum(map(len, self.shards))


class ImageError(Exception):
    """The bytes are not a valid key-value image."""


class _Header(msgspec.Struct, frozen=True, array_like=True):
    format: int
    applied_index: U64
    clock_ms: U64
    sessions: list[SessionImage]
    # Byte length and number of pairs of each data chunk that follows.
    chunk_bytes: list[U64]
    chunk_pairs: list[U64]


_MAGIC = b"RKVI"
_FORMAT = 2  # 2: registered sessions (thesis §6.3) and the log clock
_FRAME = struct.Struct(">4sI")  # magic, header length
_image_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(_Header)
_pairs_decoder = msgspec.msgpack.Decoder(list[tuple[Key, Value]])


def encode_image(img: KVImage) -> bytes:
    """Serialise an image. Pure and safe to run in another thread: it encodes
    chunks of about KV_IMAGE_CHUNK_BYTES so the interpreter lock is released
    between them, and the final join releases it too."""
    chunks: list[bytes] = []
    chunk_pairs: list[int] = []
    batch: list[tuple[str, bytes]] = []
    size = 0
    for shard in img.shards:
        if not shard:
            continue
        for kv in shard.items():
            batch.append(kv)
            size += len(kv[0]) + len(kv[1])
            if size >= KV_IMAGE_CHUNK_BYTES:
                chunks.append(_image_encoder.encode(batch))
                chunk_pairs.append(len(batch))
                batch, size = [], 0
    if batch:
        chunks.append(_image_encoder.encode(batch))
        chunk_pairs.append(len(batch))
    header = _image_encoder.encode(
        _Header(_FORMAT, img.applied_index, img.clock_ms, list(img.sessions),
                [len(c) for c in chunks], chunk_pairs)
    )
    return b"".join([_FRAME.pack(_MAGIC, len(header)), header, *chunks])


def decode_image(data: bytes | memoryview) -> KVImage:
    """Parse and check an image; raise `ImageError` on anything malformed.
    Pure and safe to run in another thread."""
    try:
        return _decode_image(memoryview(data).cast("B"))
    except ImageError:
        raise
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ImageError(str(e)) from None
    except Exception as e:  # the contract: only ImageError escapes
        raise ImageError(f"{type(e).__name__}: {e}") from None


def _decode_image(buf: memoryview) -> KVImage:
    if len(buf) < _FRAME.size:
        raise ImageError(f"an image of {len(buf)} bytes is too short")
    magic, hlen = _FRAME.unpack_from(buf)
    if magic != _MAGIC:
        raise ImageError("not a key-value image (bad magic)")
    pos = _FRAME.size + hlen
    if pos > len(buf):
        raise ImageError("truncated image header")
    h = _header_decoder.decode(buf[_FRAME.size : pos])
    if h.format != _FORMAT:
        raise ImageError(f"unknown image format {h.format}")
    if len(h.chunk_bytes) != len(h.chunk_pairs):
        raise ImageError("chunk tables of different lengths")
    if pos + sum(h.chunk_bytes) != len(buf):
        raise ImageError(f"data chunks do not fill the image of {len(buf)} bytes")
    problem = check_images(h.clock_ms, h.applied_index, h.sessions)
    if problem is not None:
        raise ImageError(problem)
    shards: tuple[dict[str, bytes], ...] = tuple({} for _ in range(_SHARDS))
    total = 0
    crc32 = zlib.crc32
    for nbytes, npairs in zip(h.chunk_bytes, h.chunk_pairs, strict=True):
        pairs = _pairs_decoder.decode(buf[pos : pos + nbytes])
        pos += nbytes
        if len(pairs) != npairs:
            raise ImageError("a data chunk holds the wrong number of pairs")
        total += npairs
        # `_check_key` and `_shard_of` inlined: this loop runs once per key of
        # the store. Decoded strings are valid UTF-8, without surrogates.
        for key, value in pairs:
            if len(key) * 4 > MAX_KEY_BYTES:
                _check_key(key)
            shards[crc32(key.encode()) % _SHARDS][key] = value
    if sum(map(len, shards)) != total:
        raise ImageError("a key appears twice")
    return KVImage(h.applied_index, shards, h.clock_ms, tuple(h.sessions))


def image_digest(img: KVImage) -> str:
    """SHA-256 of the encoded image: equal on replicas at the same index."""
    return hashlib.sha256(encode_image(img)).hexdigest()


# --- the state machine --------------------------------------------------------


class KVStore:
    """Applies committed commands in log order, each session's write at most
    once (thesis §6.3).

    The session settings are rules of the replicated state: every replica of
    a cluster must use the same, or their states part.
    """

    def __init__(self, *, session_timeout_ms: int = SESSION_TIMEOUT_MS,
                 max_sessions: int = MAX_SESSIONS,
                 max_outstanding: int = MAX_OUTSTANDING_PER_SESSION,
                 unsafe_bugs: frozenset[str] = frozenset()) -> None:
        self._data = _CowMap()
        self._apply_unknown_sessions = UNSAFE_APPLY_UNKNOWN_SESSIONS in unsafe_bugs
        self.sessions = SessionTable(timeout_ms=session_timeout_ms, max_sessions=max_sessions,
                                     max_outstanding=max_outstanding)
        self._applied = 0

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def clock_ms(self) -> int:
        """The log's clock: the latest time a leader stamped on an applied entry."""
        return self.sessions.clock_ms

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> bytes | None:
        return self._data.get(key)

    def keys(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix`, sorted."""
        return sorted(k for k, _ in self._data.items() if k.startswith(prefix))

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
            cmd = decode_command(data)
        except CommandError:
            return None
        table = self.sessions
        table.advance(cmd.time_ms)
        body = cmd.body
        if isinstance(body, Write):
            return self._write(index, body)
        if isinstance(body, RegisterSession):
            table.register(index)
            return Applied(index, 0, _NOOP, index)
        table.close(body.session)
        return Applied(body.session, 0, _NOOP, index)

    def _write(self, index: int, w: Write) -> Applied:
        table = self.sessions
        sess = table.get(w.session)
        if sess is None and self._apply_unknown_sessions and w.session < index:
            # The old bug, on purpose: taken for a new session (an id below
            # `index` keeps the snapshot image valid), the retry runs again.
            sess = table.register(w.session)
        if sess is None:
            # Never applied: it may be the retry of a write applied before
            # the session expired (the client cannot tell, so it reports
            # the outcome as unknown).
            return Applied(w.session, w.seq, _EXPIRED, index)
        table.touch(sess)
        # A client cannot have its answer to `seq` and still wait for it.
        sess.release_below(min(w.first_outstanding, w.seq))
        fp = fingerprint(w.op)
        done = sess.answers.get(w.seq)
        if done is not None:
            if done.fingerprint != fp:
                return Applied(w.session, w.seq, _REUSED, index)
            return Applied(w.session, w.seq, done.result, done.index)
        if w.seq < sess.first_outstanding:
            # Its answer was released: applied or not, it must not run now.
            return Applied(w.session, w.seq, _STALE, index)
        if w.seq >= sess.first_outstanding + table.max_outstanding:
            return Applied(w.session, w.seq, _OUTSTANDING, index)
        try:
            op = decode_op(w.op)
        except CommandError:
            result = _BAD
        else:
            result = self._execute(op)
        sess.answers[w.seq] = Answer(w.seq, index, fp, result)
        return Applied(w.session, w.seq, result, index, executed=True)

    def _execute(self, op: Op) -> Result:
        data = self._data
        if isinstance(op, Put):
            replaced = data.put(op.key, op.value)
            return Result(ok=True, value=replaced) if op.prev else _NOOP
        if isinstance(op, Delete):
            removed = data.delete(op.key)
            return Result(ok=True, value=removed) if op.prev else _NOOP
        if isinstance(op, Append):
            before = data.get(op.key) or b""
            if len(before) + len(op.value) > MAX_VALUE_BYTES:
                return _TOO_LARGE
            data.put(op.key, before + op.value)
            return _NOOP
        current = data.get(op.key)
        if current != op.expected:
            return Result(ok=False, value=current, error=CAS_FAILED)
        data.put(op.key, op.value)
        return _NOOP

    def freeze(self) -> KVImage:
        """The current state as an image, in O(shards + sessions) time."""
        return KVImage(self._applied, self._data.freeze(), self.sessions.clock_ms,
                       tuple(self.sessions.image()))

    def install(self, img: KVImage) -> None:
        """Replace the whole state by `img` (from `decode_image`)."""
        self._data = _CowMap(img.shards)
        self.sessions.load(img.clock_ms, img.sessions)
        self._applied = img.applied_index

    def restore(self, data: bytes) -> None:
        """Replace the whole state by an encoded image; raise `ImageError`
        and change nothing if it is malformed."""
        self.install(decode_image(data))

    def digest(self) -> str:
        """Hex digest of data, sessions, clock and applied index."""
        return image_digest(self.freeze())
