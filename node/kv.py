"""The key-value state machine applied from committed log entries, its commands,
client sessions (exactly-once) and snapshot images.

No I/O, clocks or randomness: every replica that applies the same entries
reaches the same state, byte for byte.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

import msgspec

from node.config import (
    KV_IMAGE_CHUNK_BYTES,
    MAX_CLIENT_ID_CHARS,
    MAX_KEY_BYTES,
    MAX_SESSIONS,
    MAX_VALUE_BYTES,
)
from node.messages import U64

# Codes in `Result.error`; clients match on them, so they never change.
BAD_COMMAND = "bad_command"
STALE_SEQUENCE = "stale_sequence"
CAS_FAILED = "cas_failed"

# A key is at most MAX_KEY_BYTES of UTF-8; a character is at least one byte, so
# the decoder can reject longer strings before `_check_key` counts bytes.
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_BYTES)]
Value = Annotated[bytes, msgspec.Meta(max_length=MAX_VALUE_BYTES)]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CLIENT_ID_CHARS)]


def _check_key(key: str) -> None:
    # 4 bytes is the longest UTF-8 character: shorter keys need no encoding.
    if not key or (len(key) * 4 > MAX_KEY_BYTES and len(key.encode()) > MAX_KEY_BYTES):
        raise ValueError(f"a key must be 1 to {MAX_KEY_BYTES} bytes of UTF-8")


def _check_value(value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"a value must be at most {MAX_VALUE_BYTES} bytes")


# --- commands ---------------------------------------------------------------


class Put(msgspec.Struct, frozen=True, array_like=True, tag_field="op", tag="put"):
    """Set `key` to `value`."""

    key: Key
    value: Value

    def __post_init__(self) -> None:
        _check_key(self.key)
        _check_value(self.value)


class Delete(msgspec.Struct, frozen=True, array_like=True, tag_field="op", tag="delete"):
    """Remove `key` (absent is fine)."""

    key: Key

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


Op = Put | Delete | Cas


class Command(msgspec.Struct, frozen=True, array_like=True):
    """What a client proposes: `op`, numbered `seq` within session `client` so
    that a retry is applied once (thesis §6.3)."""

    client: ClientId
    seq: U64
    op: Op


class Result(msgspec.Struct, frozen=True):
    """The outcome of one command. `value` is the previous value for put,
    delete and a successful cas, and the current value when a cas fails;
    `error` is one of the codes above."""

    ok: bool
    value: Value | None = None
    error: str | None = None


class CommandError(Exception):
    """The bytes are not one valid `Command`."""


_command_encoder = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(Command)


def encode_command(cmd: Command) -> bytes:
    return _command_encoder.encode(cmd)


def decode_command(data: bytes | memoryview) -> Command:
    try:
        return _command_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise CommandError(str(e)) from None
    except Exception as e:  # the contract: only CommandError escapes
        raise CommandError(f"{type(e).__name__}: {e}") from None


_NOOP = Result(ok=True)
_BAD = Result(ok=False, error=BAD_COMMAND)
_STALE = Result(ok=False, error=STALE_SEQUENCE)


# --- the data, copy-on-write in shards ----------------------------------------

# The keys are spread over this many dicts by a hash that is the same in every
# process (str hashes are salted per process). Part of the image format: the
# canonical order of keys is by shard, then by insertion within a shard.
# After a freeze, one batch of writes to random keys touches most shards and
# copies each: with 256 shards and 300k keys that was the whole store (~150 ms
# on the loop thread, past an election timeout under load); with 4096, a
# batch of a few hundred writes copies a tenth of it.
_SHARDS = 4096


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
        self._shards = list(shards) if shards is not None else [{} for _ in range(_SHARDS)]
        # True where the shard dict is also referenced by an image.
        self._shared = [shards is not None] * _SHARDS
        self._len = sum(len(s) for s in self._shards)

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


class _Session(msgspec.Struct, frozen=True, array_like=True):
    """The last command applied for `client`: its seq, log index and result."""

    client: ClientId
    seq: U64
    index: U64
    result: Result


@dataclass(frozen=True, slots=True)
class KVImage:
    """The whole state at `applied_index`. Shares its dicts with the store it
    came from, which copies them before writing: never mutate an image."""

    applied_index: int
    shards: tuple[dict[str, bytes], ...]
    # Oldest last-applied index first: the eviction order.
    sessions: tuple[_Session, ...]

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)


class ImageError(Exception):
    """The bytes are not a valid key-value image."""


class _Header(msgspec.Struct, frozen=True, array_like=True):
    format: int
    applied_index: U64
    sessions: list[_Session]
    # Byte length and number of pairs of each data chunk that follows.
    chunk_bytes: list[U64]
    chunk_pairs: list[U64]


_MAGIC = b"RKVI"
_FORMAT = 1
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
        _Header(_FORMAT, img.applied_index, list(img.sessions),
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
    clients: set[str] = set()
    last = -1
    for s in h.sessions:
        if s.client in clients:
            raise ImageError(f"session {s.client!r} appears twice")
        if not last < s.index <= h.applied_index:
            raise ImageError(f"session {s.client!r} at index {s.index} is out of order")
        clients.add(s.client)
        last = s.index
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
    if sum(len(s) for s in shards) != total:
        raise ImageError("a key appears twice")
    return KVImage(h.applied_index, shards, tuple(h.sessions))


def image_digest(img: KVImage) -> str:
    """SHA-256 of the encoded image: equal on replicas at the same index."""
    return hashlib.sha256(encode_image(img)).hexdigest()


# --- the state machine --------------------------------------------------------


class KVStore:
    """Applies committed commands in log order, once per client sequence number.

    Every replica must use the same `max_sessions`: eviction is part of the
    replicated state.
    """

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self._max_sessions = max_sessions
        self._data = _CowMap()
        self._sessions: collections.OrderedDict[str, _Session] = collections.OrderedDict()
        self._applied = 0

    @property
    def applied_index(self) -> int:
        return self._applied

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> bytes | None:
        return self._data.get(key)

    def keys(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix`, sorted."""
        return sorted(k for k, _ in self._data.items() if k.startswith(prefix))

    def apply(self, index: int, data: bytes) -> tuple[Command | None, Result]:
        """Apply the entry at `index`. Empty `data` is a no-op entry (a new
        leader's, §5.4.2). Bad data yields `bad_command` and changes nothing
        but the applied index; only an out-of-order `index` raises."""
        if index <= self._applied:
            raise ValueError(f"entry {index} applied after entry {self._applied}")
        self._applied = index
        if not data:
            return None, _NOOP
        try:
            cmd = decode_command(data)
        except CommandError:
            return None, _BAD
        sess = self._sessions.get(cmd.client)
        if sess is not None and cmd.seq <= sess.seq:
            # A retry of the latest command gets its result again; anything
            # older was already answered (thesis §6.3).
            return cmd, sess.result if cmd.seq == sess.seq else _STALE
        result = self._execute(cmd.op)
        self._sessions[cmd.client] = _Session(cmd.client, cmd.seq, index, result)
        self._sessions.move_to_end(cmd.client)
        self._evict()
        return cmd, result

    def _execute(self, op: Op) -> Result:
        if isinstance(op, Put):
            return Result(ok=True, value=self._data.put(op.key, op.value))
        if isinstance(op, Delete):
            return Result(ok=True, value=self._data.delete(op.key))
        current = self._data.get(op.key)
        if current != op.expected:
            return Result(ok=False, value=current, error=CAS_FAILED)
        return Result(ok=True, value=self._data.put(op.key, op.value))

    def _evict(self) -> None:
        # Oldest last-applied index first: the same on every replica.
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)

    def freeze(self) -> KVImage:
        """The current state as an image, in O(shards + sessions) time."""
        return KVImage(self._applied, self._data.freeze(), tuple(self._sessions.values()))

    def install(self, img: KVImage) -> None:
        """Replace the whole state by `img` (from `decode_image`)."""
        self._data = _CowMap(img.shards)
        self._sessions = collections.OrderedDict((s.client, s) for s in img.sessions)
        self._applied = img.applied_index
        self._evict()

    def restore(self, data: bytes) -> None:
        """Replace the whole state by an encoded image; raise `ImageError`
        and change nothing if it is malformed."""
        self.install(decode_image(data))

    def digest(self) -> str:
        """Hex digest of data, sessions and applied index."""
        return image_digest(self.freeze())
