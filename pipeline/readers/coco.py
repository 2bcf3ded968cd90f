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

"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from typing import Any

from ..errors import SourceError, UsageError
from .base import Reader
from .fields import checked_caption, checked_name, id_field, images_root, json_field, json_list, load_json
from .urlpath import SourcePath

logger = logging.getLogger(__name__)

#: How much of the head and of the tail of a file ``sniff`` looks at.
SNIFF_BYTES = 64 * 1024
_SPLIT_IN_NAME = re.compile(r"(train|val|test)")


def split_from_file_name(name: str) -> str:
    """The split a COCO file name says (``captions_val2014.json`` → "val"); "train" if none."""
    found = _SPLIT_IN_NAME.search(name.lower())
    return found.group(1) if found else "train"


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
