"""Checkpoint files (``numbadam.checkpoint._files``): atomic replacement, failures
that keep the previous file, only regular files replaced or read, the umask
never touched, modes kept, long, bytes and bad paths.
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from checkpoint_helpers import (
    _expect,
    _trained,
)

from numbadam import CheckpointError, load_checkpoint, save_checkpoint


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    opt, variables = _trained()
    path = tmp_path / "c.npz"
    save_checkpoint(path, opt, variables, metadata={"v": 1})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a write

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, opt, variables, metadata={"v": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]
    save_checkpoint(path, opt, variables, metadata={"v": 3})
    assert load_checkpoint(path).metadata == {"v": 3}
    assert os.listdir(tmp_path) == ["c.npz"]


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.npz")
    _expect(tmp_path, "is a folder")


# ---------------------------------------------------------------------------
# saving: failures keep the previous file, only regular files are replaced,
# the umask is never touched, a file's mode is kept
# ---------------------------------------------------------------------------


class _DiskFull:
    """A file whose disk fills up after ``budget`` bytes (writes raise ENOSPC)."""

    def __init__(self, f, budget):
        self._f, self._left = f, budget

    def write(self, data):
        n = memoryview(data).nbytes
        if n > self._left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _fail_after(monkeypatch, budget):
    real = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real(fd, mode, *args, **kwargs)
        return _DiskFull(f, budget) if "w" in mode else f

    monkeypatch.setattr(os, "fdopen", fdopen)


def _raise_oserror(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(
    "fault", ["write0", "write1000", "write-end", "fsync", "replace"]
)
def test_failed_save_keeps_the_previous_file_and_leaves_no_other(
    tmp_path, monkeypatch, fault
):
    opt, variables = _trained(amsgrad=True)
    path = tmp_path / "c.npz"
    save_checkpoint(path, opt, variables, metadata={"v": 1})
    before = path.read_bytes()
    opt.apply_gradients([(np.ones(2, np.float32), variables["bias"])])
    if fault.startswith("write"):
        budget = {"write0": 0, "write1000": 1000, "write-end": len(before) - 8}[fault]
        _fail_after(monkeypatch, budget)
        code = errno.ENOSPC
    else:
        code = errno.EIO
        monkeypatch.setattr(os, fault, _raise_oserror(code))
    with pytest.raises(OSError) as info:
        save_checkpoint(path, opt, variables, metadata={"v": 2})
    monkeypatch.undo()
    assert info.value.errno == code and info.value.filename == str(path)
    assert "unchanged" in str(info.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]
    assert load_checkpoint(path).metadata == {"v": 1}


def _special_files(tmp_path):
    """(name, path, is-still-it) of non-regular files a save must not replace."""
    import socket
    import stat

    out = []
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    out.append(("FIFO", fifo, lambda: stat.S_ISFIFO(os.lstat(fifo).st_mode)))
    sock_path = tmp_path / "sock.npz"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()
    out.append(
        ("socket", sock_path, lambda: stat.S_ISSOCK(os.lstat(sock_path).st_mode))
    )
    # A link to /dev/null: the link is followed, /dev/null refused. (Without the
    # check, os.replace would replace the link, not /dev/null: safe to test.)
    link = tmp_path / "null.npz"
    os.symlink(os.devnull, link)
    out.append(
        (
            "character device",
            link,
            lambda: os.readlink(link) == os.devnull
            and stat.S_ISCHR(os.stat(os.devnull).st_mode),
        )
    )
    dev = tmp_path / "dev.npz"
    try:  # only root may create device nodes; as root, this one is /dev/null's twin
        os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        pass
    else:
        out.append(
            ("character device", dev, lambda: stat.S_ISCHR(os.lstat(dev).st_mode))
        )
    return out


def test_save_refuses_anything_but_a_regular_file(tmp_path):
    opt, variables = _trained()
    specials = _special_files(tmp_path)
    names = sorted(os.listdir(tmp_path))
    for kind, path, still in specials:
        with pytest.raises(CheckpointError, match=f"is a {kind}") as info:
            save_checkpoint(path, opt, variables)
        assert info.value.path == str(path)
        assert still(), f"{kind} {path} was replaced"
    assert sorted(os.listdir(tmp_path)) == names  # no temporary file left


def test_load_refuses_anything_but_a_regular_file(tmp_path):
    for kind, path, still in _special_files(tmp_path):
        _expect(path, f"is a {kind}.*, not a checkpoint file")  # and does not block
        assert still()


def test_save_follows_a_link_to_a_regular_file(tmp_path):
    opt, variables = _trained()
    real = tmp_path / "ckpt-3.npz"
    save_checkpoint(real, opt, variables, metadata={"v": 1})
    link = tmp_path / "latest.npz"
    os.symlink(real.name, link)
    save_checkpoint(link, opt, variables, metadata={"v": 2})
    assert os.path.islink(link) and os.readlink(link) == real.name
    assert load_checkpoint(real).metadata == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == ["ckpt-3.npz", "latest.npz"]


def test_save_never_touches_the_umask(tmp_path, monkeypatch):
    # Setting it, even for a moment, changes the mode of files other threads
    # create meanwhile.
    def umask(*args):
        raise AssertionError("os.umask was called")

    opt, variables = _trained()
    monkeypatch.setattr(os, "umask", umask)
    save_checkpoint(tmp_path / "c.npz", opt, variables)  # a new file
    save_checkpoint(tmp_path / "c.npz", opt, variables)  # over an existing one


def test_save_keeps_the_mode_of_an_existing_file_and_honours_the_umask(tmp_path):
    import stat

    opt, variables = _trained()
    path = tmp_path / "c.npz"
    old = os.umask(0o027)
    try:
        save_checkpoint(path, opt, variables)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # 0o666 & ~0o027
        for mode in (0o600, 0o664, 0o400):
            os.chmod(path, mode)
            save_checkpoint(path, opt, variables)
            assert stat.S_IMODE(os.stat(path).st_mode) == mode
    finally:
        os.umask(old)


def test_long_file_names(tmp_path):
    opt, variables = _trained()
    # 250 bytes is a valid name; its temporary name must not overflow 255.
    long_name = "x" * 246 + ".npz"
    path = tmp_path / long_name
    save_checkpoint(path, opt, variables, metadata={"v": 1})
    save_checkpoint(path, opt, variables, metadata={"v": 2})
    assert load_checkpoint(path).metadata == {"v": 2}
    assert os.listdir(tmp_path) == [long_name]
    # A multi-byte name near the limit: cut on a character boundary.
    path = tmp_path / ("é" * 123 + ".npz")  # 250 bytes
    save_checkpoint(path, opt, variables)
    assert load_checkpoint(path).step == 3
    os.remove(path)
    too_long = tmp_path / ("y" * 300 + ".npz")
    with pytest.raises(CheckpointError, match="too long"):
        save_checkpoint(too_long, opt, variables)
    _expect(too_long, "too long")
    assert os.listdir(tmp_path) == [long_name]


def test_bytes_paths(tmp_path):
    opt, variables = _trained()
    path = os.fsencode(tmp_path / "c.npz")
    assert save_checkpoint(path, opt, variables) == str(tmp_path / "c.npz")
    ckpt = load_checkpoint(path)
    assert ckpt.path == str(tmp_path / "c.npz") and ckpt.step == 3
    with pytest.raises(CheckpointError, match="is a folder") as info:
        load_checkpoint(os.fsencode(tmp_path))
    assert info.value.path == str(tmp_path)  # a str, not bytes


def test_bad_paths(tmp_path):
    opt, variables = _trained()
    with pytest.raises(CheckpointError, match="empty"):
        save_checkpoint("", opt, variables)
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(b"")
    with pytest.raises(CheckpointError, match="NUL"):
        save_checkpoint(str(tmp_path / "a\0b.npz"), opt, variables)
    with pytest.raises(CheckpointError, match="NUL"):
        load_checkpoint(str(tmp_path / "a\0b.npz"))
    with pytest.raises(TypeError, match="path must be a str"):
        save_checkpoint(3, opt, variables)
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        nested = []
        for _ in range(100_000):
            nested = [nested]
        save_checkpoint(tmp_path / "c.npz", opt, variables, metadata={"x": nested})
    assert os.listdir(tmp_path) == []
