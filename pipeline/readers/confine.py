"""Image files named by a source: confined to their root folder by real path, read only if regular.

Annotation files are data, and so is an image folder someone else packed: a name like
``../../etc/passwd``, a symlink ``evil.jpg -> /etc/hostname`` or a symlinked directory
``sub -> /home`` must not make a build read, and publish in a shard, a file outside the
folder the user named. The check is made on the path's text (``..``) and then on its real
path (every symlink resolved) before anything is opened; ``follow_symlinks`` waives the
second part only. A FIFO, a device or a directory is never an image: it is refused from
its ``stat`` and, should it be swapped in after that, opened non-blocking and refused from
``fstat``, so a build never hangs on one or reads ``/dev/zero`` forever.
"""

from __future__ import annotations

import functools
import os
import posixpath
import stat

from ..errors import CapshardError


class ImageUnavailable(CapshardError):
    """The image of a row cannot be read (missing file, unreadable bytes). ``reason`` is the reject code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)

    def __reduce__(self) -> tuple[type[ImageUnavailable], tuple[str, str]]:
        # Raised in pool workers: it must survive the trip back to the parent process.
        return type(self), (self.reason, str(self))


#: Flags for opening an image: never block on a FIFO, never follow a symlink swapped in late.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def confined_path(image_path: str, root: str | os.PathLike[str] | None, *, follow_symlinks: bool = False) -> str:
    """The real path of ``image_path`` (relative to ``root``, or absolute), refused when it leaves ``root``.

    Raises ``ImageUnavailable("path_outside_images")`` when the path's text leaves ``root``
    (``..``, an absolute path elsewhere) or, unless ``follow_symlinks``, when its real path
    does (a symlinked file or directory whose target lies outside). Nothing is opened; only
    ``lstat`` calls are made. ``root=None``: no folder to stay in, only symlinks are resolved.
    """
    if root is None:
        return os.path.realpath(image_path)
    top = os.path.abspath(root)
    path = os.path.normpath(os.path.join(top, image_path))
    if not _inside(path, top):
        raise ImageUnavailable("path_outside_images", f"image path {image_path} is outside the image folder {top}")
    real_top = _real_root(top)
    real = _real_below(real_top, os.curdir if path == top else path[len(top.rstrip(os.sep)) + 1 :])  # relpath, inside
    if not follow_symlinks and not _inside(real, real_top):
        raise ImageUnavailable(
            "path_outside_images",
            f"image path {image_path} leads through a symlink to {real}, outside the image folder "
            f"{real_top} (--follow-symlinks allows it)",
        )
    return real


@functools.lru_cache(maxsize=16)
def _real_root(top: str) -> str:
    # Once per root and process, not per image: os.path.realpath lstats every component.
    return os.path.realpath(top)


def _real_below(real_top: str, rel: str) -> str:
    """``realpath(real_top/rel)``, lstat-ing only the components below the root (``rel`` has no ``..``).

    Up to the first symlink, the real path is the path itself; from there ``os.path.realpath``
    resolves the rest (also ``..`` inside a link's target)."""
    parts = [] if rel == os.curdir else rel.split(os.sep)
    current = real_top
    for i, part in enumerate(parts):
        step = os.path.join(current, part)
        try:
            mode = os.lstat(step).st_mode
        except OSError:  # missing (or unreadable): nothing below can be a link; reading it reports why
            return os.path.join(step, *parts[i + 1 :])
        if stat.S_ISLNK(mode):
            return os.path.realpath(os.path.join(step, *parts[i + 1 :]))
        current = step
    return current


def _inside(path: str, root: str) -> bool:
    """Whether normalised absolute ``path`` is ``root`` or below it (``/a/bc`` is not below ``/a/b``)."""
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


def read_image_file(path: str) -> bytes:
    """The bytes of the regular file at ``path``; OS errors and non-files become reject reasons.

    ``path`` should be a real path (see :func:`confined_path`): a symlink there is refused.
    """
    try:
        _require_regular(os.stat(path), path)
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise ImageUnavailable("missing_image", f"image file not found: {path}") from None
    except NotADirectoryError:
        raise ImageUnavailable("missing_image", f"image file not found (a parent is not a folder): {path}") from None
    except OSError as e:
        raise ImageUnavailable("unreadable_image", f"cannot read image file {path}: {e.strerror}") from None
    try:
        opened = os.fstat(fd)
        _require_regular(opened, path)  # what was opened, should the file have been swapped
        return _read_all(fd, opened.st_size)
    except OSError as e:
        raise ImageUnavailable("unreadable_image", f"cannot read image file {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def _read_all(fd: int, size: int) -> bytes:
    """Everything in ``fd`` up to end of file; ``size`` (from ``fstat``) sizes the first ``read``,
    so a file of that size takes one read and the empty one that ends it (a buffered file
    object would ``fstat`` and seek again). A file that grew, or a read cut short, reads on."""
    parts: list[bytes] = []
    while chunk := os.read(fd, size + 1 if not parts else 1 << 20):
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _require_regular(st: os.stat_result, path: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ImageUnavailable("not_a_file", f"image path {path} is a {_kind(st.st_mode)}, not a regular file")


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symlink"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def confined_url(image_path: str, root: str) -> str:
    """The URL of ``image_path`` (a URL below ``root`` or a key relative to it), refused when it leaves ``root``.

    An object store has no symlinks: only the text counts. A key with ``..`` that climbs
    out, an absolute key (``root//etc/passwd``) or a URL elsewhere is ``path_outside_images``.
    """
    top = root.rstrip("/")
    if "://" not in image_path:
        key = image_path
    elif image_path.startswith(top + "/"):
        key = image_path[len(top) + 1 :]
    else:
        raise ImageUnavailable("path_outside_images", f"image {image_path} is outside the image prefix {top}")
    normal = posixpath.normpath(key) if key else ""
    if not key or key.startswith("/") or normal == ".." or normal.startswith("../") or normal == ".":
        raise ImageUnavailable("path_outside_images", f"image key {key!r} is outside the image prefix {top}")
    return f"{top}/{normal}"
