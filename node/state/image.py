"""Snapshot images of the key-value state machine: the frozen state
(`KVImage`), its byte format (5: keys in order with their revisions and the
history of changes, in framed chunks written as they are encoded, and the
leases in the header; 4 and 2, of earlier versions, still read), and the
checks an image must pass. Pure: encoding and decoding are safe on another thread.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

from node.config import KV_IMAGE_CHUNK_BYTES, MAX_KEY_BYTES
from node.raft.messages import U64
from node.state.image_stream import SECTION_END, ImageEncoder, framed_sections
from node.state.index import SortedKeys
from node.state.leases import LeaseImage, check_lease_images
from node.state.mvcc import SHARDS, Change, ChangeLog, CowMap, LogView, Mvcc, Rec, shard_of
from node.state.ops import Key, Value, check_key
from node.state.sessions import SessionImage, check_images

_NO_CHANGES = LogView((), 0, 0)


@dataclass(frozen=True, slots=True)
class KVImage:
    """The whole state at `applied_index`. Shares its dicts and lists with the
    store it came from, which copies them before writing: never mutate an
    image."""

    applied_index: int
    shards: tuple[dict[str, Rec], ...]
    # The log's clock, and the sessions, oldest activity first.
    clock_ms: int
    sessions: tuple[SessionImage, ...]
    # The live keys in order (the index's chunks), the store's revision, the
    # oldest revision kept, and the changes kept since it.
    keys: tuple[list[str], ...] = ()
    revision: int = 0
    compacted: int = 0
    changes: LogView = _NO_CHANGES
    # The leases (node/state/leases.py) in id order.
    leases: tuple[LeaseImage, ...] = ()

    def __len__(self) -> int:
        return sum(map(len, self.shards))


def freeze(mv: Mvcc, applied_index: int, clock_ms: int, sessions: tuple[SessionImage, ...],
           leases: tuple[LeaseImage, ...] = ()) -> KVImage:
    """`mv` as an image, in O(shards + chunks + sessions + leases) time."""
    return KVImage(applied_index, mv.data.freeze(), clock_ms, sessions, mv.index.freeze(),
                   mv.revision, mv.compacted, mv.log.freeze(), leases)


def thaw(img: KVImage, mv: Mvcc) -> None:
    """Make `mv` hold what `img` holds (sharing it, copy-on-write)."""
    log = ChangeLog(img.changes)
    mv.load(CowMap(img.shards), SortedKeys(img.keys), log, img.revision, img.compacted)


class ImageError(Exception):
    """The bytes are not a valid key-value image."""


class _Header(msgspec.Struct, frozen=True, array_like=True):
    format: int
    applied_index: U64
    clock_ms: U64
    sessions: list[SessionImage]
    # Format 2: byte length and number of pairs of each data chunk that
    # follows. Format 4 frames its chunks instead and leaves these empty.
    chunk_bytes: list[U64]
    chunk_pairs: list[U64]
    # Format 4: the revision and the oldest kept (the two lists after them
    # are always empty: a development version's chunk tables of changes).
    revision: U64 = 0
    compacted: U64 = 0
    change_bytes: list[U64] = []
    change_counts: list[U64] = []
    # Format 5: the leases, in id order.
    leases: list[LeaseImage] = []


class _ChangeImage(msgspec.Struct, frozen=True, array_like=True):
    """A change as an image holds it: `before` is True where it is what the
    key's previous change in the image made (most changes: no need to hold
    the value twice)."""

    rev: U64
    key: Key
    after: Rec | None
    before: Rec | bool | None


_MAGIC = b"RKVI"
# 2: registered sessions (thesis §6.3) and the log clock, keys by shard.
# 4: keys in order with their revisions, and the history (node/state/mvcc.py),
#    each chunk framed by its length (node/state/image_stream.py), so that it
#    is written as it is encoded. (3 was never released.)
# 5: the leases and their keys (node/state/leases.py), in the header.
_FORMAT = 5
_FRAME = struct.Struct(">4sI")  # magic, header length
_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(_Header)
_v2_pairs_decoder = msgspec.msgpack.Decoder(list[tuple[Key, Value]])
_pairs_decoder = msgspec.msgpack.Decoder(list[tuple[Key, Rec]])
_changes_decoder = msgspec.msgpack.Decoder(list[_ChangeImage])


def _chunks(img: KVImage) -> Iterator[bytes]:
    """The image's chunks after its header, made as they are asked for:
    [key, record] pairs in key order, the end of that section, then the
    changes kept, each chunk about KV_IMAGE_CHUNK_BYTES."""
    batch: list[object] = []
    size = 0
    shards = img.shards
    crc32 = zlib.crc32
    for part in img.keys:
        for key in part:
            rec = shards[crc32(key.encode()) % SHARDS][key]
            batch.append((key, rec))
            size += len(key) + len(rec.value)
            if size >= KV_IMAGE_CHUNK_BYTES:
                yield _encoder.encode(batch)
                batch, size = [], 0
    if batch:
        yield _encoder.encode(batch)
    yield SECTION_END
    batch, size = [], 0
    seen: set[str] = set()
    for c in img.changes:
        before: Rec | bool | None = True if c.key in seen else c.before
        seen.add(c.key)
        batch.append(_ChangeImage(c.rev, c.key, c.after, before))
        size += len(c.key) + (len(c.after.value) if c.after is not None else 0) + 16
        if size >= KV_IMAGE_CHUNK_BYTES:
            yield _encoder.encode(batch)
            batch, size = [], 0
    if batch:
        yield _encoder.encode(batch)


def image_encoder(img: KVImage) -> ImageEncoder:
    """The image's bytes a piece at a time, for a loop to encode a slice per
    turn (node/runner_snap.py). Pure."""
    header = _encoder.encode(_Header(_FORMAT, img.applied_index, img.clock_ms,
                                     list(img.sessions), [], [], img.revision, img.compacted,
                                     [], [], list(img.leases)))
    return ImageEncoder(_FRAME.pack(_MAGIC, len(header)) + header, _chunks(img))


def encode_image(img: KVImage) -> bytes:
    """Serialise an image at once. Pure and safe to run in another thread."""
    return image_encoder(img).encode_all()


def decode_image(data: bytes | memoryview) -> KVImage:
    """Parse and check an image; raise `ImageError` on anything malformed.
    Pure and safe to run in another thread."""
    try:
        return _decode(memoryview(data).cast("B"))
    except ImageError:
        raise
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ImageError(str(e)) from None
    except Exception as e:  # the contract: only ImageError escapes
        raise ImageError(f"{type(e).__name__}: {e}") from None


def _decode(buf: memoryview) -> KVImage:
    if len(buf) < _FRAME.size:
        raise ImageError(f"an image of {len(buf)} bytes is too short")
    magic, hlen = _FRAME.unpack_from(buf)
    if magic != _MAGIC:
        raise ImageError("not a key-value image (bad magic)")
    pos = _FRAME.size + hlen
    if pos > len(buf):
        raise ImageError("truncated image header")
    h = _header_decoder.decode(buf[_FRAME.size : pos])
    if h.format not in (2, 4, _FORMAT):
        raise ImageError(f"unknown image format {h.format}")
    if len(h.chunk_bytes) != len(h.chunk_pairs) or len(h.change_bytes) != len(h.change_counts):
        raise ImageError("chunk tables of different lengths")
    if h.format >= 4 and (h.chunk_bytes or h.change_bytes):
        raise ImageError(f"a format {h.format} image frames its chunks: its tables are empty")
    if h.format < _FORMAT and h.leases:
        raise ImageError(f"a format {h.format} image holds no leases")
    if h.format == 2 and pos + sum(h.chunk_bytes) != len(buf):
        raise ImageError(f"data chunks do not fill the image of {len(buf)} bytes")
    problem = check_images(h.clock_ms, h.applied_index, h.sessions)
    if problem is not None:
        raise ImageError(problem)
    if h.format == 2:
        if h.revision or h.compacted or h.change_bytes:
            raise ImageError("a format 2 image holds no revisions")
        shards, keys = _v2_data(buf, pos, h)
        return KVImage(h.applied_index, shards, h.clock_ms, tuple(h.sessions),
                       SortedKeys.from_sorted(keys).freeze())
    try:
        data, history = framed_sections(buf, pos, 2)
    except ValueError as e:
        raise ImageError(str(e)) from None
    shards, keys = _data(data, h)
    changes = _changes(history, h, shards)
    problem = check_lease_images(h.applied_index, h.leases,
                                 (k for k in (key for lease in h.leases for key in lease.keys)
                                  if k in shards[shard_of(k)]))
    if problem is not None:
        raise ImageError(problem)
    return KVImage(h.applied_index, shards, h.clock_ms, tuple(h.sessions),
                   SortedKeys.from_sorted(keys).freeze(), h.revision, h.compacted,
                   ChangeLog(changes).freeze(), tuple(h.leases))


def _v2_data(buf: memoryview, pos: int,
             h: _Header) -> tuple[tuple[dict[str, Rec], ...], list[str]]:
    """Format 2: [key, value] pairs by shard. Its keys have no revisions
    (they read as created at revision 1 once revisions begin)."""
    shards: tuple[dict[str, Rec], ...] = tuple({} for _ in range(SHARDS))
    total = 0
    crc32 = zlib.crc32
    for nbytes, npairs in zip(h.chunk_bytes, h.chunk_pairs, strict=True):
        pairs = _v2_pairs_decoder.decode(buf[pos : pos + nbytes])
        pos += nbytes
        if len(pairs) != npairs:
            raise ImageError("a data chunk holds the wrong number of pairs")
        total += npairs
        for key, value in pairs:
            if len(key) * 4 > MAX_KEY_BYTES:
                check_key(key)
            shards[crc32(key.encode()) % SHARDS][key] = Rec(value, 0, 0, 0)
    if sum(map(len, shards)) != total:
        raise ImageError("a key appears twice")
    return shards, sorted(k for s in shards for k in s)


def _data(chunks: list[memoryview],
          h: _Header) -> tuple[tuple[dict[str, Rec], ...], list[str]]:
    """[key, record] pairs in key order."""
    shards: tuple[dict[str, Rec], ...] = tuple({} for _ in range(SHARDS))
    keys: list[str] = []
    crc32 = zlib.crc32
    last = ""
    rev = h.revision
    for chunk in chunks:
        pairs = _pairs_decoder.decode(chunk)
        # `check_key` and `shard_of` inlined: this loop runs once per key of
        # the store. Decoded strings are valid UTF-8, without surrogates.
        for key, rec in pairs:
            if key <= last and keys:
                raise ImageError(f"key {key!r} is out of order or appears twice")
            last = key
            if len(key) * 4 > MAX_KEY_BYTES:
                check_key(key)
            # Zeros: written before revisions began; else within them.
            if (rec.create or rec.mod or rec.version) and not (
                    0 < rec.create <= rec.mod <= rev and rec.version > 0):
                raise ImageError(f"key {key!r} has revisions the image cannot hold")
            keys.append(key)
            shards[crc32(key.encode()) % SHARDS][key] = rec
    return shards, keys


def _changes(chunks: list[memoryview], h: _Header,
             shards: tuple[dict[str, Rec], ...]) -> list[Change]:
    """The history, checked against the revisions and the live keys: in
    revision order, within [compacted, revision], each key's last change
    leaving it as the data holds it."""
    if h.compacted > h.revision or (h.revision and not h.compacted):
        raise ImageError(f"compacted revision {h.compacted} does not fit revision {h.revision}")
    out: list[Change] = []
    last: dict[str, Change] = {}
    rev = h.compacted
    for chunk in chunks:
        items = _changes_decoder.decode(chunk)
        for c in items:
            if not max(rev, 1) <= c.rev <= h.revision or (
                    c.after is not None and c.after.mod != c.rev):
                raise ImageError(f"a change of {c.key!r} at revision {c.rev} is out of order")
            rev = c.rev
            prev = last.get(c.key)
            before: Rec | None
            if c.before is True:
                if prev is None:
                    raise ImageError(f"the first change of {c.key!r} names no earlier one")
                before = prev.after
            elif isinstance(c.before, bool) or prev is not None:
                raise ImageError(f"a change of {c.key!r} does not follow its earlier one")
            else:
                before = c.before
            ch = Change(c.rev, c.key, c.after, before)
            last[c.key] = ch
            out.append(ch)
    for key, ch in last.items():
        shard = shards[shard_of(key)]
        if shard.get(key) != ch.after:
            raise ImageError(f"the last change of {key!r} does not leave it as the image holds it")
        if ch.after is not None:
            shard[key] = ch.after  # one object for both, as in the store it came from
    return out


def image_digest(img: KVImage) -> str:
    """SHA-256 of the encoded image: equal on replicas at the same index."""
    return hashlib.sha256(encode_image(img)).hexdigest()
