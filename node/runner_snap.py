"""The runner's side of snapshots and of the log's memory, made without
stopping its loop: a local snapshot's image (or a digest's) is encoded from
a frozen copy a slice per turn within a time budget, and written by a
helper thread that holds the interpreter lock only between system calls; a
leader's snapshot is written and decoded off the loop while the Ready that
brought it waits; entries compacted or evicted are freed a slice per turn.
A mixin of `NodeRunner` (node/runner.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import gc
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from node.config import KV_IMAGE_PIECE_BYTES, SNAPSHOT_RATIO_FLOOR_BYTES
from node.raft.messages import Entry, Snapshot, SnapshotMeta
from node.state.image_stream import ImageEncoder
from node.state.kv import KVImage, KVStore, decode_image, image_encoder
from node.state.mvcc import Rec
from node.storage import FileStorage, StorageError
from node.storage.snapfile import SnapshotWriter

if TYPE_CHECKING:
    import structlog

    from node.config import ClusterConfig
    from node.consensus import ConsensusCore
    from node.disk import DiskWatch

# Each turn of the loop encodes image pieces for at most this long. A turn
# under full load takes 5 to 30 ms; a heartbeat leaves every 20 ms.
SNAPSHOT_SLICE_MS = 2.0
# Entries a snapshot let the log forget are freed this many per turn (about
# a millisecond's work): a snapshot interval of them freed at once held the
# loop for 15 to 50 ms under load.
ENTRIES_FREED_PER_TURN = 4096
# The state a leader's snapshot replaced is freed this many of its shard
# dicts per turn (of 4,096; a few milliseconds at a million keys): freed at
# once, 400,000 keys held the installing turn for about 100 ms.
SHARDS_FREED_PER_TURN = 64
# An image whose bytes all went (a local snapshot's, a digest's) still holds
# the shards, index chunks and history chunks the store has replaced since
# it was frozen: dropped at once, at 400k keys it held the loop 10 to 30 ms
# in the turn that finished the image. Its shards go SHARDS_FREED_PER_TURN
# a turn, its index and history chunks (a thousand keys or changes each)
# this many.
IMAGE_CHUNKS_FREED_PER_TURN = 8
# Encoded pieces wait for the writer thread up to this many bytes; past it
# the loop encodes no more until the disk took some (a slow disk slows the
# snapshot, not the loop, and bounds the memory of what waits).
SNAPSHOT_QUEUE_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class _LocalSnapshot:
    meta: SnapshotMeta
    writer: SnapshotWriter
    # Writes handed to the thread and not yet done, with their sizes.
    pending: collections.deque[tuple[concurrent.futures.Future[Any], int]]
    queued_bytes: int = 0
    # The commands' bytes since the last snapshot when it began: counted
    # again if it is abandoned, so a retry is not held back a whole image.
    log_bytes: int = 0
    finished: concurrent.futures.Future[Any] | None = None
    failed: BaseException | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _ImageJob:
    """A frozen image on its way to `sink`, a piece per call; `done` once
    all of it went. A local snapshot's job waits while its writer is behind."""

    encoder: ImageEncoder
    sink: Callable[[bytes], None]
    done: Callable[[], None]
    snapshot: _LocalSnapshot | None = None
    # The frozen image the encoder reads, released a slice per turn once done.
    image: KVImage | None = None


class SnapshotHandling:
    """Local snapshots, digests and a leader's snapshot (see the module)."""

    if TYPE_CHECKING:
        # Set up by NodeRunner.__init__ (node/runner.py).
        core: ConsensusCore[Any]
        kv: KVStore
        storage: FileStorage
        disk: DiskWatch
        cfg: ClusterConfig
        log: structlog.typing.FilteringBoundLogger
        _snapshotter: concurrent.futures.ThreadPoolExecutor
        _bytes_since_snapshot: int
        # The size of the snapshot image this node holds (its own last, or a
        # leader's): what the next local one waits for (_snapshot_due).
        _last_image_bytes: int

        def _log_event(self, emit: Callable[..., Any], event: str,
                       kw: dict[str, Any]) -> None: ...

    def _init_snapshots(self) -> None:
        self._image_jobs: list[_ImageJob] = []
        self._local_snap: _LocalSnapshot | None = None
        # A leader's snapshot being written and decoded off the loop.
        self._received: tuple[SnapshotMeta, concurrent.futures.Future[KVImage]] | None = None
        self._received_image: KVImage | None = None
        # Entries compacted away and not yet freed (ENTRIES_FREED_PER_TURN).
        self._to_free: list[Entry] = []
        # Shards of a state machine replaced by a leader's snapshot, or of a
        # finished image, to free.
        self._shards_to_free: list[dict[str, Rec]] = []
        # A finished image's index and history chunks, to free.
        self._image_chunks_to_free: list[list[Any]] = []

    # --- local snapshots ------------------------------------------------------

    def _snapshot_due(self) -> bool:
        """The bounds of the cluster file say a local snapshot is due."""
        since = self.kv.applied_index - self.core.snapshot_meta.index
        due = (since >= self.cfg.snapshot_entries
               or self._bytes_since_snapshot >= self.cfg.snapshot_bytes)
        if due and self._last_image_bytes >= SNAPSHOT_RATIO_FLOOR_BYTES:
            # A big image costs more than the log it replaces: wait for
            # that log (node/config.py, SNAPSHOT_LOG_RATIO).
            due = self._bytes_since_snapshot >= \
                self.cfg.snapshot_log_ratio * self._last_image_bytes
        return due

    def _maybe_snapshot(self, force: bool = False) -> bool:
        if self._local_snap is not None or self.disk.state != "ok":
            return False  # a snapshot is the whole state written once more
        applied = self.kv.applied_index
        if applied <= self.core.snapshot_meta.index or not (force or self._snapshot_due()):
            return False
        term = self.core.log.term(applied)
        if term is None:
            return False
        meta = SnapshotMeta(applied, term)
        try:
            writer = self.storage.snapshot_writer(meta)
        except OSError as e:
            self._log_event(self.log.error, "snapshot_failed",
                            {"index": meta.index, "error": str(e)})
            return False
        # Freezing is cheap (copy-on-write shards, a CRC-32 per kept session
        # answer: node/state/sessions.py); the encoding goes a
        # slice per turn (_advance_images), the writing to the thread.
        job = _LocalSnapshot(meta, writer, collections.deque(),
                             log_bytes=self._bytes_since_snapshot)
        self._local_snap = job
        image = self.kv.freeze()
        self._image_jobs.append(_ImageJob(image_encoder(image),
                                          lambda piece: self._queue_piece(job, piece),
                                          lambda: self._finish_local(job), job, image))
        self._bytes_since_snapshot = 0
        return True

    def _queue_piece(self, job: _LocalSnapshot, piece: bytes) -> None:
        job.pending.append((self._snapshotter.submit(job.writer.write, piece), len(piece)))
        job.queued_bytes += len(piece)

    def _finish_local(self, job: _LocalSnapshot) -> None:
        job.finished = self._snapshotter.submit(job.writer.finish)

    def _remove_files(self, job: Callable[[], None]) -> None:
        """Unlink dead files on the snapshot thread (FileStorage.remove_files_with)."""
        try:
            self._snapshotter.submit(job)
        except RuntimeError:  # the node is stopping: the thread is gone
            job()

    def _images_waiting(self) -> bool:
        """Image pieces are left to encode and the writer can take them."""
        return any(self._may_encode(j) for j in self._image_jobs)

    @staticmethod
    def _may_encode(job: _ImageJob) -> bool:
        return job.snapshot is None or job.snapshot.queued_bytes < SNAPSHOT_QUEUE_BYTES

    def _release_log_memory(self) -> None:
        """Evict applied entries beyond the log's cache from memory, in the
        core and in storage (which reads them back from the WAL when a
        follower lags), and free a slice of what was dropped."""
        dropped = self.core.evict_log()
        if dropped:
            self.storage.evict(self.core.log.mem_base)
            self._to_free.extend(dropped)
        if self._to_free:
            del self._to_free[-ENTRIES_FREED_PER_TURN:]
        if self._shards_to_free:
            del self._shards_to_free[-SHARDS_FREED_PER_TURN:]
        if self._image_chunks_to_free:
            del self._image_chunks_to_free[-IMAGE_CHUNKS_FREED_PER_TURN:]

    def _advance_images(self) -> None:
        """One slice of encoding, then see what the writer finished."""
        self._reap_writes()
        if self._image_jobs:
            until = time.monotonic() + SNAPSHOT_SLICE_MS / 1000.0
            for job in list(self._image_jobs):
                # A piece each turn at least: a busy loop still finishes it.
                first = True
                while self._may_encode(job) and (first or time.monotonic() < until):
                    first = False
                    piece = job.encoder.next_piece(KV_IMAGE_PIECE_BYTES)
                    if piece is None:
                        self._image_jobs.remove(job)
                        self._release_image(job)
                        job.done()
                        break
                    job.sink(piece)
        self._check_local_snapshot()

    def _reap_writes(self) -> None:
        job = self._local_snap
        if job is None:
            return
        while job.pending and job.pending[0][0].done():
            fut, n = job.pending.popleft()
            job.queued_bytes -= n
            if job.failed is None and fut.exception() is not None:
                job.failed = fut.exception()

    def _check_local_snapshot(self) -> None:
        job = self._local_snap
        if job is None:
            return
        if job.failed is not None:
            self._abandon_local(job, job.failed)
            return
        if job.finished is None or not job.finished.done() or job.pending:
            return
        self._local_snap = None
        err = job.finished.exception()
        if err is not None:
            self._abandon_local(job, err)
            return
        started = time.monotonic()
        meta = job.meta
        if meta.index <= self.core.snapshot_meta.index:
            return  # a leader's snapshot overtook ours
        self.storage.install_local_snapshot(meta)
        self._last_image_bytes = job.writer.size
        self._to_free.extend(self.core.compact(meta))
        self.log.info("snapshot_created", index=meta.index, snapshot_term=meta.term,
                      bytes=job.writer.size,
                      took_ms=round((started - job.started) * 1000, 1),
                      install_ms=round((time.monotonic() - started) * 1000, 3))

    def _release_image(self, job: _ImageJob) -> None:
        """Hand what `job`'s frozen image holds to the per-turn freeing."""
        image, job.image = job.image, None
        if image is not None:
            self._shards_to_free.extend(image.shards)
            self._image_chunks_to_free.extend(image.keys)
            self._image_chunks_to_free.extend(image.changes.chunks)

    def _abandon_local(self, job: _LocalSnapshot, err: BaseException) -> None:
        self._local_snap = None
        self._bytes_since_snapshot += job.log_bytes
        for j in self._image_jobs:
            if j.snapshot is job:
                self._release_image(j)
        self._image_jobs = [j for j in self._image_jobs if j.snapshot is not job]
        try:
            self._snapshotter.submit(job.writer.abort)
        except RuntimeError:  # the node is stopping: the thread is gone
            job.writer.abort()
        self._log_event(self.log.error, "snapshot_failed",
                        {"index": job.meta.index, "error": str(err)})
        if not isinstance(err, (OSError, StorageError)):
            raise err

    def _digest_job(self) -> concurrent.futures.Future[dict[str, Any]]:
        """The state machine's digest, hashed from a frozen image a slice
        per turn: hashing a large state at once held the loop for longer
        than an election timeout."""
        image = self.kv.freeze()
        applied, keys = image.applied_index, len(image)
        h = hashlib.sha256()
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._image_jobs.append(_ImageJob(
            image_encoder(image), h.update,
            lambda: fut.set_result({"applied": applied, "digest": h.hexdigest(), "keys": keys}),
            image=image))
        return fut

    # --- a leader's snapshot (§7) ---------------------------------------------

    def _received_ready(self, snap: Snapshot) -> bool:
        """Write and decode a leader's snapshot off the loop; True once it
        is stored (its mark staged in the WAL) and its image decoded, to be
        installed in the state machine by the Ready's install step."""
        got = self._received
        if got is None or got[0] != snap.meta:
            storage = self.storage
            meta, data = snap.meta, snap.data

            def work() -> KVImage:
                storage.write_snapshot_file(meta, data)
                return decode_image(data)

            self._received = (meta, self._snapshotter.submit(work))
            return False
        meta, fut = got
        if not fut.done():
            return False
        self._received = None
        self._received_image = fut.result()
        self.storage.install_received_snapshot(meta)
        return True

    def _install_received(self, snap: Snapshot) -> None:
        image, self._received_image = self._received_image, None
        if image is None or image.applied_index != snap.meta.index:
            image = decode_image(snap.data)
        replaced = self.kv.mvcc.data.freeze()  # the shards alone, not a whole image
        self.kv.install(image)
        self._shards_to_free.extend(replaced)
        del replaced
        self._bytes_since_snapshot = 0
        self._last_image_bytes = len(snap.data)
        # The whole state was just made; it lives long: out of later collections.
        gc.freeze()
