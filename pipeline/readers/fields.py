"""Field checks shared by the readers of published annotation files (COCO, Karpathy, Flickr, tables).

Each turns a malformed field into a :class:`~pipeline.errors.SourceError` naming the file and
the place in it, or a :class:`~pipeline.errors.UsageError` for a missing ``--images``.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import SourceError, UsageError
from .base import SourceSpec
from .urlpath import SourcePath

_UTF8_BOM = b"\xef\xbb\xbf"


def load_json(path: SourcePath) -> Any:
    """Parse a JSON file; a syntax error raises ``SourceError`` with its line.

    Bytes that are not UTF-8 do not fail the parse: they come back as lone surrogates
    (``surrogateescape``), so a reader can reject the one caption that holds them
    (``checked_caption``) instead of the whole file.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    text = data.removeprefix(_UTF8_BOM).decode("utf-8", "surrogateescape")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SourceError(path, e.lineno, f"not valid JSON: {e.msg} (column {e.colno})") from None


def checked_caption(text: str) -> str | None:
    """``text`` when it is valid Unicode (encodable as UTF-8), else ``None``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def checked_name(value: object, path: SourcePath, where: str, key: str) -> str:
    """A string field that names something (a file, a split): must be a valid string."""
    if not isinstance(value, str) or checked_caption(value) is None:
        raise SourceError(path, where, f"{key!r} must be a UTF-8 string, found {value!r}")
    return value


def images_root(spec: SourceSpec, fmt: str) -> str:
    """The absolute image folder (or URL prefix) of ``spec``; formats that name image files need it."""
    if spec.images is None:
        raise UsageError(f"the {fmt} format names image files: pass --images DIR, the folder that holds them")
    folder = spec.location(spec.images)
    if not folder.is_dir():
        raise UsageError(f"--images {spec.images}: not a folder")
    return str(folder.absolute())


def json_field(entry: Any, key: str, path: SourcePath, where: str) -> Any:
    """``entry[key]``; a missing key or an entry that is not an object names ``where``."""
    if not isinstance(entry, dict):
        raise SourceError(path, where, f"expected an object, found {type(entry).__name__}")
    if key not in entry:
        raise SourceError(path, where, f"missing key {key!r}")
    return entry[key]


def id_field(entry: Any, key: str, path: SourcePath, where: str) -> int | str:
    """An id field: an integer or a UTF-8 string (JSON ``true`` is not an id)."""
    value = json_field(entry, key, path, where)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or checked_caption(str(value)) is None:
        raise SourceError(path, where, f"{key!r} must be an integer or a string, found {value!r}")
    return value


def json_list(doc: Any, key: str, path: SourcePath) -> list[Any]:
    """The top-level list ``doc[key]``."""
    value = json_field(doc, key, path, "top level")
    if not isinstance(value, list):
        raise SourceError(path, key, f"{key!r} must be a list, found {type(value).__name__}")
    return value
