"""A filesystem that keeps every unsynced change in memory, as Jepsen's LazyFS
does, over a backing directory that holds only what was made durable; `cut()`
is the power cut. The FUSE callbacks under mfusepy's names; no FUSE, no process.

What a cut loses (modelled):
- file data and size changes (write, truncate, fallocate) made since the
  file's last fsync or fdatasync; both persist data and size, as fdatasync
  must persist a size that the data needs to be read back;
- directory entries (a file created, linked, renamed or unlinked) made since
  their directory's last fsync. A file fsynced before any durable entry names
  it keeps its data on disk but is unreachable: the cut drops it, as fsck
  drops an orphan inode. A replacing rename is atomic: the old file stays
  under the name until the directory is fsynced.

Not modelled: mkdir, rmdir and directory renames are durable at once;
permission bits and times live in memory (a cut resets them to the disk's);
an unsynced write is lost whole, never torn, and nothing unsynced reaches the
disk by itself as kernel writeback would (the worst case, LazyFS's default);
no journal ordering (ext4 also persists a new file's entry when the file is
fsynced; here, as POSIX promises, only its directory's fsync does); renameat2
flags, which mfusepy drops (the kernel still refuses RENAME_NOREPLACE onto an
existing name, but RENAME_EXCHANGE would act as a plain rename); symlinks,
special files, xattrs and chown are refused. A clean unmount (`destroy`)
writes back everything, as umount(8) does.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import msgspec

from chaos.powerloss.pages import PAGE_BYTES, Pages

# In the backing root, hidden from the mount: the synced content of files that
# no durable entry names yet (created, written and fsynced, directory not yet).
ORPHANS_DIR = ".powerloss-orphans"
_FALLOC_FL_KEEP_SIZE = 0x01

P = ParamSpec("P")
R = TypeVar("R")


class CacheStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What is unsynced right now (what a cut would drop), and counters."""

    files_dirty: int = 0  # files whose data or size differs from the disk's
    pages_dirty: int = 0  # PAGE_BYTES pages written since their file's last fsync
    entries_dirty: int = 0  # names created, replaced or removed since their directory's fsync
    file_syncs: int = 0
    dir_syncs: int = 0
    cuts: int = 0
    pid: int = 0  # of the process serving the filesystem


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@dataclass(eq=False)
class _Dir:
    ino: int
    mode: int
    parent: _Dir | None
    name: str
    times_ns: list[int]  # atime, mtime, ctime
    entries: dict[str, _File | _Dir] = field(default_factory=dict)
    durable: dict[str, _File] = field(default_factory=dict)  # the file entries on disk


@dataclass(eq=False)
class _File:
    ino: int
    mode: int
    times_ns: list[int]
    data: Pages = field(default_factory=Pages)
    names: set[tuple[_Dir, str]] = field(default_factory=set)  # durable entries naming it
    orphan: bool = False  # its disk copy is in ORPHANS_DIR: no durable entry names it
    links: int = 0  # entries naming it now
    opens: int = 0


@dataclass(frozen=True)
class _Handle:
    node: _File | _Dir
    append: bool


def _locked(fn: Callable[Concatenate[LazyFs, P], R]) -> Callable[Concatenate[LazyFs, P], R]:
    """Serialise a callback with the others and with the control thread."""

    @functools.wraps(fn)
    def run(self: LazyFs, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            return fn(self, *args, **kwargs)

    return run


class LazyFs:
    """The filesystem over `backing`; every callback and `cut` is thread-safe.
    Paths are the mount's ("/a/b"); a file handle, where given, wins over a path."""

    use_ns = True  # mfusepy: times in integer nanoseconds

    def __init__(self, backing: Path) -> None:
        self.backing = backing
        self._orphans = backing / ORPHANS_DIR
        self._lock = threading.Lock()
        self._inos = itertools.count(1)
        self._fhs = itertools.count(1)
        self._handles: dict[int, _Handle] = {}
        self._file_syncs = 0
        self._dir_syncs = 0
        self._cuts = 0
        self._root = self._load()

    # --- the power cut and the disk ---------------------------------------------

    @_locked
    def cut(self) -> CacheStatus:
        """Drop every unsynced change: the mount shows the disk's state again and
        every open handle fails with EIO. Returns what was unsynced."""
        self._cuts += 1
        dropped = self._status()
        self._handles.clear()
        self._root = self._load()
        return dropped

    @_locked
    def status(self) -> CacheStatus:
        return self._status()

    @_locked
    def sync_all(self) -> None:
        """Write back everything, as sync(2) does."""
        dirs = [self._root]
        for d in dirs:
            for node in d.entries.values():
                if isinstance(node, _Dir):
                    dirs.append(node)
                elif node.data.dirty():
                    self._sync_file(node)
        for d in dirs:
            self._sync_dir(d)

    def destroy(self, path: str) -> None:
        """Unmounted cleanly: nothing is lost."""
        self.sync_all()

    def _load(self) -> _Dir:
        """The tree as the disk holds it; orphans are dropped, as fsck drops them."""
        shutil.rmtree(self._orphans, ignore_errors=True)
        seen: dict[tuple[int, int], _File] = {}
        root = self._load_dir(self.backing, None, "", seen)
        self._orphans.mkdir()
        return root

    def _load_dir(self, path: Path, parent: _Dir | None, name: str,
                  seen: dict[tuple[int, int], _File]) -> _Dir:
        st = os.stat(path)
        d = _Dir(next(self._inos), st.st_mode, parent, name, _times(st))
        with os.scandir(path) as it:
            for e in it:
                if parent is None and e.name == ORPHANS_DIR:
                    continue
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    d.entries[e.name] = self._load_dir(Path(e.path), d, e.name, seen)
                    continue
                if not stat.S_ISREG(st.st_mode):
                    raise ValueError(f"{e.path} is neither a file nor a directory; the "
                                     "power-loss filesystem holds only those: move it away")
                f = seen.get((st.st_dev, st.st_ino))
                if f is None:
                    f = _File(next(self._inos), st.st_mode, _times(st),
                              Pages.on_disk(st.st_size))
                    seen[(st.st_dev, st.st_ino)] = f
                f.links += 1
                f.names.add((d, e.name))
                d.entries[e.name] = f
                d.durable[e.name] = f
        return d

    def _status(self) -> CacheStatus:
        files: dict[int, _File] = {h.node.ino: h.node for h in self._handles.values()
                                   if isinstance(h.node, _File)}
        entries = 0
        dirs = [self._root]
        for d in dirs:
            want = {}
            for name, node in d.entries.items():
                if isinstance(node, _Dir):
                    dirs.append(node)
                else:
                    files[node.ino] = node
                    want[name] = node
            entries += sum(1 for n, f in want.items() if d.durable.get(n) is not f)
            entries += sum(1 for n in d.durable if n not in want)
        return CacheStatus(
            files_dirty=sum(f.data.dirty() for f in files.values()),
            pages_dirty=sum(len(f.data.pages) for f in files.values()),
            entries_dirty=entries, file_syncs=self._file_syncs, dir_syncs=self._dir_syncs,
            cuts=self._cuts, pid=os.getpid())

    def _dir_path(self, d: _Dir) -> Path:
        parts = []
        while d.parent is not None:
            parts.append(d.name)
            d = d.parent
        return self.backing.joinpath(*reversed(parts))

    def _orphan_path(self, f: _File) -> Path:
        return self._orphans / str(f.ino)

    def _disk_path(self, f: _File) -> Path | None:
        """Where the disk holds `f`'s durable content, if anywhere."""
        for d, name in f.names:
            return self._dir_path(d) / name
        return self._orphan_path(f) if f.orphan else None

    def _disk_reader(self, f: _File) -> Callable[[int, int], bytes]:
        def read(offset: int, n: int) -> bytes:
            path = self._disk_path(f)
            if path is None:
                return b""
            fd = os.open(path, os.O_RDONLY)
            try:
                return os.pread(fd, n, offset)
            finally:
                os.close(fd)

        return read

    def _sync_file(self, f: _File) -> None:
        """Write `f`'s pages and size to the disk and fdatasync it there."""
        path = self._disk_path(f)
        if path is None:
            path = self._orphan_path(f)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, f.mode & 0o7777))
            f.orphan = True
        fd = os.open(path, os.O_WRONLY)
        try:
            f.data.write_back(fd)
        finally:
            os.close(fd)

    def _sync_dir(self, d: _Dir) -> None:
        """Make the disk's file entries of `d` what the mount shows, then fsync it."""
        dpath = self._dir_path(d)
        want = {n: f for n, f in d.entries.items() if isinstance(f, _File)}
        for name, f in want.items():
            old = d.durable.get(name)
            if old is f:
                continue
            if old is not None:
                self._drop_name(old, d, name)
            # Link first, then rename over the name: the old file goes atomically.
            tmp = self._orphans / f"link-{next(self._inos)}"
            src = self._disk_path(f)
            if src is None:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, f.mode & 0o7777))
            else:
                os.link(src, tmp)
            os.replace(tmp, dpath / name)
            f.names.add((d, name))
            if f.orphan:
                os.unlink(self._orphan_path(f))
                f.orphan = False
        for name in [n for n in d.durable if n not in want]:
            self._drop_name(d.durable[name], d, name)
            os.unlink(dpath / name)
        d.durable = want
        _fsync_path(dpath)

    def _drop_name(self, f: _File, d: _Dir, name: str) -> None:
        """The durable entry `name` in `d` is about to go: if it is the last one
        naming `f` and `f` is still in use, its content moves to the orphans."""
        f.names.discard((d, name))
        if not f.names and (f.links or f.opens):
            os.link(self._dir_path(d) / name, self._orphan_path(f))
            f.orphan = True

    def _drop_durable_entry(self, d: _Dir, name: str) -> None:
        """Remove a durable file entry at once (a directory takes its name)."""
        f = d.durable.pop(name, None)
        if f is not None:
            self._drop_name(f, d, name)
            os.unlink(self._dir_path(d) / name)

    def _forget_if_unused(self, f: _File) -> None:
        if f.links or f.opens:
            return
        f.data = Pages()
        if f.orphan:
            os.unlink(self._orphan_path(f))
            f.orphan = False

    # --- lookups ----------------------------------------------------------------------

    def _resolve(self, path: str | None) -> _File | _Dir:
        if path is None:
            raise _err(errno.ENOENT)
        node: _File | _Dir = self._root
        for part in path.split("/"):
            if not part:
                continue
            if not isinstance(node, _Dir):
                raise _err(errno.ENOTDIR)
            nxt = node.entries.get(part)
            if nxt is None:
                raise _err(errno.ENOENT)
            node = nxt
        return node

    def _parent(self, path: str) -> tuple[_Dir, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        d = self._resolve(head)
        if not isinstance(d, _Dir):
            raise _err(errno.ENOTDIR)
        if not name:
            raise _err(errno.EBUSY)
        if d is self._root and name == ORPHANS_DIR:
            raise _err(errno.EPERM)
        return d, name

    def _node(self, path: str | None, fh: int | None) -> _File | _Dir:
        if fh is not None and fh in self._handles:
            return self._handles[fh].node
        if fh and path is None:
            raise _err(errno.EIO)  # a handle from before a cut
        return self._resolve(path)

    def _file(self, fh: int) -> tuple[_File, _Handle]:
        h = self._handles.get(fh)
        if h is None:
            raise _err(errno.EIO)  # opened before a cut: that file is gone
        if not isinstance(h.node, _File):
            raise _err(errno.EISDIR)
        return h.node, h

    def _open(self, node: _File | _Dir, flags: int) -> int:
        fh = next(self._fhs)
        self._handles[fh] = _Handle(node, bool(flags & os.O_APPEND))
        if isinstance(node, _File):
            node.opens += 1
        return fh

    # --- FUSE callbacks: files ----------------------------------------------------

    @_locked
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        node = self._node(path, fh)
        atime, mtime, ctime = node.times_ns
        attrs: dict[str, Any] = {"st_mode": node.mode, "st_ino": node.ino, "st_uid": os.getuid(),
                                 "st_gid": os.getgid(), "st_atime": atime, "st_mtime": mtime,
                                 "st_ctime": ctime, "st_blksize": PAGE_BYTES}
        if isinstance(node, _Dir):
            subdirs = sum(isinstance(n, _Dir) for n in node.entries.values())
            attrs.update(st_nlink=2 + subdirs, st_size=PAGE_BYTES, st_blocks=8)
        else:
            size = node.data.size
            attrs.update(st_nlink=node.links, st_size=size, st_blocks=-(-size // 512))
        return attrs

    @_locked
    def create(self, path: str, mode: int, flags: int) -> int:
        d, name = self._parent(path)
        node = d.entries.get(name)
        if node is not None:
            if flags & os.O_EXCL:
                raise _err(errno.EEXIST)
            if isinstance(node, _Dir):
                raise _err(errno.EISDIR)
            return self._open(node, flags)
        f = _File(next(self._inos), stat.S_IFREG | (mode & 0o7777), _now(), links=1)
        d.entries[name] = f
        d.times_ns[1:] = _now()[1:]
        return self._open(f, flags)

    @_locked
    def open(self, path: str, flags: int) -> int:
        node = self._resolve(path)
        if isinstance(node, _Dir):
            raise _err(errno.EISDIR)
        if flags & os.O_TRUNC:
            node.data.truncate(0)
            node.times_ns[1:] = _now()[1:]
        return self._open(node, flags)

    @_locked
    def release(self, path: str | None, fh: int) -> int:
        h = self._handles.pop(fh, None)
        if h is not None and isinstance(h.node, _File):
            h.node.opens -= 1
            self._forget_if_unused(h.node)
        return 0

    @_locked
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        f, _ = self._file(fh)
        return f.data.read(offset, size, self._disk_reader(f))

    @_locked
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        f, h = self._file(fh)
        f.data.write(f.data.size if h.append else offset, data, self._disk_reader(f))
        f.times_ns[1:] = _now()[1:]
        return len(data)

    @_locked
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        node = self._node(path, fh)
        if isinstance(node, _Dir):
            raise _err(errno.EISDIR)
        node.data.truncate(length)
        node.times_ns[1:] = _now()[1:]
        return 0

    @_locked
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        f, _ = self._file(fh)
        if mode & ~_FALLOC_FL_KEEP_SIZE:
            raise _err(errno.EOPNOTSUPP)
        if not mode & _FALLOC_FL_KEEP_SIZE and offset + size > f.data.size:
            f.data.truncate(offset + size)
        return 0

    @_locked
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        f, _ = self._file(fh)
        self._sync_file(f)
        self._file_syncs += 1
        return 0

    @_locked
    def chmod(self, path: str | None, mode: int) -> int:
        node = self._resolve(path)
        node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        return 0

    @_locked
    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        node = self._resolve(path)
        now = time.time_ns()
        node.times_ns[:2] = list(times) if times is not None else [now, now]
        return 0

    @_locked
    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.backing)
        return {k: getattr(st, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                             "f_bavail", "f_files", "f_ffree", "f_favail",
                                             "f_flag", "f_namemax")}

    # --- FUSE callbacks: names --------------------------------------------------------

    @_locked
    def unlink(self, path: str) -> int:
        d, name = self._parent(path)
        node = d.entries.get(name)
        if node is None:
            raise _err(errno.ENOENT)
        if isinstance(node, _Dir):
            raise _err(errno.EISDIR)
        del d.entries[name]
        node.links -= 1
        self._forget_if_unused(node)
        return 0

    @_locked
    def link(self, target: str, source: str) -> int:
        node = self._resolve(source)
        if isinstance(node, _Dir):
            raise _err(errno.EPERM)
        d, name = self._parent(target)
        if name in d.entries:
            raise _err(errno.EEXIST)
        d.entries[name] = node
        node.links += 1
        return 0

    @_locked
    def rename(self, old: str, new: str) -> int:
        sd, sname = self._parent(old)
        node = sd.entries.get(sname)
        if node is None:
            raise _err(errno.ENOENT)
        td, tname = self._parent(new)
        target = td.entries.get(tname)
        if target is node:
            return 0
        if isinstance(node, _Dir):
            self._rename_dir(node, target, td, tname)
        elif isinstance(target, _Dir):
            raise _err(errno.EISDIR)
        del sd.entries[sname]
        td.entries[tname] = node
        if isinstance(target, _File):
            target.links -= 1
            self._forget_if_unused(target)
        return 0

    def _rename_dir(self, node: _Dir, target: _File | _Dir | None, td: _Dir, tname: str) -> None:
        """Directories are renamed on the disk at once (not modelled)."""
        up: _Dir | None = td
        while up is not None:
            if up is node:
                raise _err(errno.EINVAL)
            up = up.parent
        if isinstance(target, _File):
            raise _err(errno.ENOTDIR)
        if target is not None:
            self._remove_dir(target)
        self._drop_durable_entry(td, tname)
        os.rename(self._dir_path(node), self._dir_path(td) / tname)
        node.parent, node.name = td, tname

    @_locked
    def mkdir(self, path: str, mode: int) -> int:
        d, name = self._parent(path)
        if name in d.entries:
            raise _err(errno.EEXIST)
        self._drop_durable_entry(d, name)
        os.mkdir(self._dir_path(d) / name, mode & 0o7777)
        d.entries[name] = _Dir(next(self._inos), stat.S_IFDIR | (mode & 0o7777), d, name, _now())
        return 0

    @_locked
    def rmdir(self, path: str) -> int:
        node = self._resolve(path)
        if not isinstance(node, _Dir):
            raise _err(errno.ENOTDIR)
        self._remove_dir(node)
        return 0

    def _remove_dir(self, d: _Dir) -> None:
        if d.parent is None:
            raise _err(errno.EBUSY)
        if d.entries:
            raise _err(errno.ENOTEMPTY)
        for name in list(d.durable):
            self._drop_durable_entry(d, name)
        os.rmdir(self._dir_path(d))
        del d.parent.entries[d.name]

    @_locked
    def opendir(self, path: str) -> int:
        node = self._resolve(path)
        if not isinstance(node, _Dir):
            raise _err(errno.ENOTDIR)
        return self._open(node, 0)

    @_locked
    def readdir(self, path: str | None, fh: int) -> list[str]:
        node = self._node(path, fh)
        if not isinstance(node, _Dir):
            raise _err(errno.ENOTDIR)
        return [".", "..", *node.entries]

    @_locked
    def releasedir(self, path: str | None, fh: int) -> int:
        self._handles.pop(fh, None)
        return 0

    @_locked
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        node = self._node(path, fh)
        if not isinstance(node, _Dir):
            raise _err(errno.ENOTDIR)
        self._sync_dir(node)
        self._dir_syncs += 1
        return 0


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _times(st: os.stat_result) -> list[int]:
    return [st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns]


def _now() -> list[int]:
    now = time.time_ns()
    return [now, now, now]
