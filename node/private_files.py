"""Files and directories only their owner may read: directories 0700 and
files 0600 whatever the umask, written whole (a temporary file created
exclusively, never through a link planted at its name, then renamed), and
owned by the user who reads them. Used by the node and the supervisor alike.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


class NotPrivate(Exception):
    """A file or directory another user owns or can reach."""


def private_dir(path: Path) -> Path:
    """`path` as a directory made 0700, and each missing parent created 0700
    (Path.mkdir gives parents the umask's mode)."""
    missing = []
    for d in (path, *path.parents):
        if d.is_dir():
            break
        missing.append(d)
    for d in reversed(missing):
        d.mkdir(mode=DIR_MODE, exist_ok=True)
    st = path.stat()
    if stat.S_IMODE(st.st_mode) != DIR_MODE and st.st_uid == os.geteuid():
        path.chmod(DIR_MODE)
    return path


def write_private(path: Path, data: bytes, *, sync: bool = False) -> None:
    """Replace `path` by `data`, mode 0600: a reader sees the old file or
    the new one, never part. The temporary file has a random name and is
    created exclusively (mkstemp: O_CREAT | O_EXCL), so nothing planted in
    the directory can redirect the write. With `sync`, durable on return."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def open_private(path: Path, flags: int) -> int:
    """Open (creating, mode 0600) a file of our own: never through a
    symlink, and made 0600 if an older version left it wider."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) != FILE_MODE and st.st_uid == os.geteuid():
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_owner(st: os.stat_result, path: Path) -> None:
    """Refuse what neither this user nor root owns: another user could have
    put it there (as ssh refuses a key file it does not trust)."""
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise NotPrivate(f"{path} is owned by uid {st.st_uid}, not by this user "
                         f"(uid {me}) or root; another user could have put it there")
