"""Output files of the subcommands: checked before any work, written atomically."""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Any, Optional, Tuple

__all__ = ["image_formats", "plot_path", "save_figure"]

#: What matplotlib does with a file name without an extension.
DEFAULT_EXTENSION = ".png"


def image_formats() -> Optional[Tuple[str, ...]]:
    """The file extensions matplotlib writes (without the dot), or ``None``
    without matplotlib."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return None
    return tuple(sorted(FigureCanvasBase.get_supported_filetypes()))


def _nearest_existing(path: str) -> str:
    folder = path
    while not os.path.lexists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def plot_path(path: str) -> str:
    """The file a plot asked for at ``path`` is written to, checked first.

    A name without an extension gets ``.png``, as matplotlib gives it (and
    this is the name to report). Refused, with a ``ValueError`` naming the
    path: an empty name, a folder (an existing one, or a name ending in a
    separator), an extension matplotlib does not write (checked when
    matplotlib is installed; without it no plot is written anyway), an
    existing entry that is not a regular file (it is never replaced), and a
    parent that is not a folder or cannot be written in. Missing folders are
    fine: they are created when the plot is written.

    Examples
    --------
    >>> import os, tempfile
    >>> from numbadam.cli._paths import plot_path
    >>> folder = tempfile.mkdtemp()
    >>> os.path.basename(plot_path(os.path.join(folder, "curves")))
    'curves.png'
    >>> plot_path(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: plot file ... is a folder; give a file name such as ...
    """
    if not path:
        raise ValueError("plot file name is empty")
    seps = tuple(s for s in (os.sep, os.altsep) if s)
    if path.endswith(seps) or os.path.isdir(path):
        example = os.path.join(path, "curves.png")
        raise ValueError(
            f"plot file {path!r} is a folder; give a file name such as {example!r}"
        )
    ext = os.path.splitext(path)[1]
    target = path + DEFAULT_EXTENSION if not ext else path
    formats = image_formats()
    if formats is not None and ext and ext[1:].lower() not in formats:
        raise ValueError(
            f"plot file {path!r}: unknown image extension {ext!r} (matplotlib "
            f"writes {', '.join('.' + f for f in formats)})"
        )
    if os.path.lexists(target):
        mode = os.lstat(target).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(
                f"plot file {target!r} exists and is not a regular file; it is "
                "not replaced"
            )
    folder = _nearest_existing(os.path.dirname(os.path.abspath(target)))
    if not os.path.isdir(folder):
        raise ValueError(f"plot file {target!r}: {folder!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"plot file {target!r}: cannot write in {folder!r}")
    return target


def save_figure(fig: Any, path: str, **savefig_kwargs: Any) -> None:
    """``fig.savefig`` to ``path`` through a temporary file in its folder, so
    that an interruption leaves the previous file whole; missing folders are
    created. The format is ``path``'s extension (``plot_path`` gives one)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    ext = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".numbadam-plot-", suffix=ext)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=ext[1:].lower(), **savefig_kwargs)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
