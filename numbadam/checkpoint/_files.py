"""Files: paths, regular-file checks, atomic replacement.

Private: the public names are re-exported by :mod:`numbadam.checkpoint`.
A documented seam: the other writers of files (``distributed/_checkpoint.py``,
``keras3`` through ``_h5.py``, ``_statedir_io.py``) use these helpers so that
every file numbadam writes follows one set of rules (regular files only,
atomic replacement, fsync, the existing mode kept, no umask changes).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import IO, Any, Callable, Optional, Tuple

from ._base import CheckpointError

_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}
_CLOEXEC = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_NAME_MAX = 255  # bytes in one file name, where the file system does not say


def _fs_path(path: Any) -> str:
    """``path`` as a ``str`` (bytes paths decoded as the OS does); checked."""
    try:
        p = os.fspath(path)
    except TypeError:
        raise TypeError(
            f"path must be a str, bytes or os.PathLike, got {type(path).__name__}"
        ) from None
    p = os.fsdecode(p)
    if not p:
        raise CheckpointError(None, "the checkpoint path is empty")
    if "\0" in p:
        raise CheckpointError(p, "the path contains a NUL character")
    return p


def _too_long(path: str) -> CheckpointError:
    return CheckpointError(
        path, "the path or file name is too long for the file system"
    )


def _regular_stat(path: str, shown: str) -> Optional[os.stat_result]:
    """``os.stat(path)`` if it exists (a regular file), ``None`` if it does not.

    Anything else that exists (folder, FIFO, device, socket) is refused: it is
    not ours to replace.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise _too_long(shown) from None
        raise
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(
            errno.EISDIR, "cannot save checkpoint: the path is a folder; give a file "
            "name, e.g. os.path.join(folder, 'model.npz')", shown
        )  # fmt: skip
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise CheckpointError(
            shown,
            f"is {kind}; numbadam writes checkpoints only to new or regular files, "
            "so it was left alone",
        )
    return st


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; rename is durable enough there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _name_max(directory: str) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        return _NAME_MAX


def _new_temp(directory: str, base: str) -> Tuple[int, str]:
    """Create ``.<base>.<random>.tmp`` in ``directory``: (fd, path).

    The name is cut to fit the file system's limit (a target name near the
    limit must not make its temporary name overflow). The mode is 0o666 less
    the process umask, applied by the OS: the umask is never read or changed.
    """
    stem = os.fsencode(base)[: max(0, _name_max(directory) - 14)]
    stem_text = stem.decode("utf-8", "ignore")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC
    for _ in range(100):
        tmp = os.path.join(directory, f".{stem_text}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", directory)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _atomic_write(
    path: str, write: Callable[[IO[bytes]], None], mode: Optional[int] = None
) -> None:
    """Replace ``path`` with what ``write(file)`` writes, atomically.

    A temporary file in the same folder is written, flushed and ``fsync``-ed,
    renamed over the target and the folder ``fsync``-ed. An existing target
    must be a regular file (a symbolic link is followed: the file it points to
    is replaced, the link stays) and keeps its permission bits; a new file gets
    ``mode`` if given, else the default that honours the umask. On any failure
    the temporary file is removed and the target is untouched; an ``OSError``
    (e.g. a full disk) is raised again naming ``path``.
    """
    target = os.path.realpath(path)
    directory, base = os.path.split(target)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            errno.ENOENT, f"cannot save checkpoint: no such folder {directory!r}", path
        )
    st = _regular_stat(target, path)
    if st is not None:
        mode = stat.S_IMODE(st.st_mode)
    try:
        fd, tmp = _new_temp(directory, base)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # the folder's path is the problem
            raise _too_long(path) from None
        msg = f"cannot save checkpoint: no temporary file in its folder ({exc})"
        raise OSError(exc.errno, msg, path) from exc
    try:
        try:
            if mode is not None:
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, mode)
                else:  # pragma: no cover - Windows
                    os.chmod(tmp, mode)
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _regular_stat(target, path)  # it may have been replaced in the meantime
        os.replace(tmp, target)
    except BaseException as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(
                exc.errno,
                f"cannot save checkpoint ({exc.strerror}); the previous file, if "
                "any, is unchanged",
                path,
            ) from exc
        raise
    _fsync_dir(directory)


def _open_regular(path: str) -> IO[bytes]:
    """Open an existing regular file for reading; refuse anything else.

    FIFOs and devices are refused before they are opened (reading one could
    block forever or never end), and once more on the open descriptor.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such checkpoint file", path) from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise _too_long(path) from None
        raise

    def refuse(st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            raise CheckpointError(path, "is a folder, not a checkpoint file")
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise CheckpointError(path, f"is {kind}, not a checkpoint file")

    refuse(st)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC)
    try:
        refuse(os.fstat(fd))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
