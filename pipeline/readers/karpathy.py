"""Karpathy split reader: ``dataset_{flickr8k,flickr30k,coco}.json`` to caption rows.

The file lists images, each with ``filename``, an optional ``filepath`` (COCO: "val2014",
"train2014"), ``split``, ``imgid``, an optional ``cocoid`` and its ``sentences``
(``raw``, ``sentid``, ``tokens``). One row per sentence, images and sentences in file order.

- image: ``--images DIR``/filepath/filename when ``filepath`` is given, falling back to
  ``DIR/filename`` when only that one exists (a flat COCO folder); else ``DIR/filename``.
- caption: the sentence's ``raw`` text as published; ``caption_id``: its ``sentid``.
- ``id_hint``: ``cocoid`` when the image has one, else ``imgid``.
- split: the image's ``split``, with "restval" mapped to ``--restval`` (default "train").

An image with no sentences gives no rows; the reader logs how many there were. A ``raw``
that is not UTF-8 gives a row with a null caption and ``reject="caption_not_utf8"``.
``location`` is "FILE:images[I].sentences[J]".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import SourceError, UsageError
from .base import Reader
from .fields import checked_caption, checked_name, id_field, images_root, json_field, json_list, load_json
from .urlpath import SourcePath

logger = logging.getLogger(__name__)

#: How much of the file ``sniff`` and ``id_column`` look at.
HEAD_BYTES = 16 * 1024


class KarpathyReader(Reader):
    """Reads a Karpathy ``dataset_*.json`` split file."""

    name = "karpathy"
    _id_column: str | None = None

    @classmethod
    def sniff(cls, path: SourcePath) -> bool:
        """A ``.json`` file whose start has ``images`` and ``sentences`` or ``dataset``
        keys and no ``annotations`` key (that one is COCO)."""
        if path.suffix.lower() != ".json" or not path.is_file():
            return False
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
        return b'"images"' in head and (b'"sentences"' in head or b'"dataset"' in head) and b'"annotations"' not in head

    def multi_caption(self) -> bool:
        return True

    def id_column(self) -> str | None:
        """ "cocoid" for the COCO file, "imgid" otherwise; known for sure once read."""
        if self._id_column is not None or self.spec.path is None:
            return self._id_column
        try:
            with self.spec.location(self.spec.path).open("rb") as f:
                head = f.read(HEAD_BYTES)
        except OSError:
            return None
        return "cocoid" if b'"cocoid"' in head else "imgid"

    def rows(self) -> Iterator[dict[str, Any]]:
        root = images_root(self.spec, self.name)
        if self.spec.path is None:
            raise UsageError("the karpathy format needs the dataset_*.json file as its source")
        path = self.spec.location(self.spec.path)
        doc = load_json(path)
        no_sentences: list[str] = []
        id_columns: set[str] = set()
        for i, image in enumerate(json_list(doc, "images", path)):
            where = f"images[{i}]"
            file_name = checked_name(json_field(image, "filename", path, where), path, where, "filename")
            sentences = json_field(image, "sentences", path, where)
            if not isinstance(sentences, list):
                raise SourceError(path, where, f"'sentences' must be a list, found {sentences!r}")
            if not sentences:
                no_sentences.append(file_name)
                continue
            id_key = "cocoid" if "cocoid" in image else "imgid" if "imgid" in image else None
            id_hint = None if id_key is None else str(id_field(image, id_key, path, where))
            if id_key is not None:
                id_columns.add(id_key)
            common = {
                "split": self._split(image, path, where),
                "image_path": _image_path(root, image.get("filepath"), file_name, path, where, self._exists),
                "id_hint": id_hint,
                "file_name": file_name,
            }
            for j, sentence in enumerate(sentences):
                s_where = f"{where}.sentences[{j}]"
                raw = json_field(sentence, "raw", path, s_where)
                if not isinstance(raw, str):
                    raise SourceError(path, s_where, f"'raw' must be a string, found {raw!r}")
                text = checked_caption(raw)
                sentid = id_field(sentence, "sentid", path, s_where) if "sentid" in sentence else None
                yield (
                    {
                        **common,
                        "location": f"{path.name}:{s_where}",
                        "caption": text,
                        "caption_id": None if sentid is None else str(sentid),
                        "reject": "caption_not_utf8" if text is None else None,
                    }
                )
        self._id_column = "cocoid" if "cocoid" in id_columns else "imgid" if id_columns else None
        if no_sentences:
            logger.warning(
                "%s: %d images have no sentences and give no rows (first: %s)",
                path.name,
                len(no_sentences),
                ", ".join(no_sentences[:5]),
            )

    def _exists(self, image_path: str) -> bool:
        """Whether an image file (or object, below a URL prefix) exists."""
        return os.path.exists(image_path) if "://" not in image_path else self.spec.location(image_path).is_file()

    def _split(self, image: dict[str, Any], path: SourcePath, where: str) -> str | None:
        if "split" not in image:
            return None
        split = checked_name(image["split"], path, where, "split")
        return self.spec.restval if split == "restval" else split


def _image_path(
    root: str, filepath: object, file_name: str, path: SourcePath, where: str, exists: Callable[[str], bool]
) -> str:
    """``root/filepath/file_name``, or ``root/file_name`` when only that one exists."""
    flat = f"{root}{os.sep}{file_name}"
    if filepath is None or filepath == "":
        return flat
    nested = f"{root}{os.sep}{checked_name(filepath, path, where, 'filepath')}{os.sep}{file_name}"
    if not exists(nested) and exists(flat):
        return flat
    return nested
