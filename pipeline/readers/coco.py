"""COCO captions reader: ``captions_{train,val,test}{2014,2017}.json`` to caption rows.

One row per entry of ``annotations``, in the file's order: COCO does not group or sort
annotations by image, and the rows keep that order (the resolve stage groups them).
``caption_id`` is the annotation ``id``, ``id_hint`` its ``image_id``, and the image is
``--images DIR`` / the ``file_name`` of the matching ``images`` entry. An annotation whose
``image_id`` has no ``images`` entry is kept as a row with ``reject="unknown_image_id"``;
a caption that is not UTF-8 as a row with a null caption and ``reject="caption_not_utf8"``
(``unknown_image_id`` wins when both apply). ``location`` is
"FILE:annotations[INDEX]".

The file does not say which split it is. The split is inferred from the file name:
``captions_train2017.json`` → "train", ``captions_val2014.json`` → "val", a name with
"test" → "test"; any other name → "train".

The JSON helpers here (``load_json``, ``checked_caption``, ``images_root``) are shared
with the Karpathy reader.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

from ..errors import SourceError, UsageError
from .base import Reader, SourceSpec
from .urlpath import SourcePath

logger = logging.getLogger(__name__)

#: How much of the head and of the tail of a file ``sniff`` looks at.
SNIFF_BYTES = 64 * 1024
_SPLIT_IN_NAME = re.compile(r"(train|val|test)")
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


def split_from_file_name(name: str) -> str:
    """The split a COCO file name says (``captions_val2014.json`` → "val"); "train" if none."""
    found = _SPLIT_IN_NAME.search(name.lower())
    return found.group(1) if found else "train"


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


class CocoReader(Reader):
    """Reads a COCO captions JSON file (``images`` + ``annotations``)."""

    name = "coco"

    @classmethod
    def sniff(cls, path: SourcePath) -> bool:
        """A ``.json`` file with ``images`` (``file_name``) and caption annotations
        (``image_id``, ``caption``), and no Karpathy ``sentences``.

        The official files hold ``info``, ``licenses``, ``images`` and then
        ``annotations``, megabytes in, so the head and the tail of the file (64 KiB
        each) are searched for the keys rather than parsing it.
        """
        if path.suffix.lower() != ".json" or not path.is_file():
            return False
        with path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
            size = f.seek(0, os.SEEK_END)
            f.seek(max(len(head), size - SNIFF_BYTES))
            tail = f.read(SNIFF_BYTES)
        text = (head + b"\n" + tail).decode("utf-8", "replace")
        keys = ('"images"', '"file_name"', '"image_id"', '"caption"')
        return all(k in text for k in keys) and '"sentences"' not in text

    def multi_caption(self) -> bool:
        return True

    def id_column(self) -> str | None:
        return "image_id"

    def rows(self) -> Iterator[dict[str, Any]]:
        root = images_root(self.spec, self.name)
        if self.spec.path is None:
            raise UsageError("the coco format needs the captions JSON file as its source")
        path = self.spec.location(self.spec.path)
        doc = load_json(path)
        files = self._file_names(doc, path)
        split = split_from_file_name(path.name)
        logger.info("%s: split %r, inferred from the file name", path.name, split)
        unknown = 0
        for i, ann in enumerate(json_list(doc, "annotations", path)):
            where = f"annotations[{i}]"
            image_id = id_field(ann, "image_id", path, where)
            caption = json_field(ann, "caption", path, where)
            if not isinstance(caption, str):
                raise SourceError(path, where, f"'caption' must be a string, found {caption!r}")
            text = checked_caption(caption)
            file_name = files.get(image_id)
            reject = None
            if file_name is None:
                reject = "unknown_image_id"
                unknown += 1
            elif text is None:
                reject = "caption_not_utf8"
            yield (
                {
                    "location": f"{path.name}:{where}",
                    "caption": text,
                    "caption_id": str(id_field(ann, "id", path, where)),
                    "split": split,
                    "image_path": None if file_name is None else f"{root}{os.sep}{file_name}",
                    "id_hint": str(image_id),
                    "file_name": file_name,
                    "reject": reject,
                }
            )
        if unknown:
            logger.warning("%s: %d annotations name an image_id that is not in 'images'", path.name, unknown)

    @staticmethod
    def _file_names(doc: Any, path: SourcePath) -> dict[int | str, str]:
        """``images[].id`` → ``file_name``; one id with two file names is an error."""
        files: dict[int | str, str] = {}
        for i, image in enumerate(json_list(doc, "images", path)):
            where = f"images[{i}]"
            image_id = id_field(image, "id", path, where)
            file_name = checked_name(json_field(image, "file_name", path, where), path, where, "file_name")
            if files.setdefault(image_id, file_name) != file_name:
                raise SourceError(
                    path,
                    where,
                    f"image id {image_id!r} has two file names: {files[image_id]!r}, {file_name!r}",
                )
        return files
