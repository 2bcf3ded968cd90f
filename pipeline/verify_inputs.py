"""``verify --inputs``: which source images no longer match a finished build, without rebuilding.

Reads the source's annotations again (as ``build`` would, with the same reading
options), lists its images as they are now (:mod:`pipeline.inputs`) and compares them
with the listing the build wrote: changed, missing, added, no longer named. The
annotation fingerprint and reading options are compared too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import IntegrityError
from .format import INPUTS, require_manifest
from .identity import differences
from .inputs import InputChanges, compare, hash_all, image_root, read_listing, referenced_paths, scan
from .readers import SourceSpec, detect, get_reader
from .rows import read_rows


@dataclass(frozen=True)
class InputsReport:
    """What differs between a build's source and the source now; ``ok`` when nothing does."""

    build_dir: Path
    images: int
    changes: InputChanges
    source: tuple[str, ...]  # other identity differences (annotations, format, reading options)

    @property
    def ok(self) -> bool:
        return not self.changes and not self.source

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "build_dir": str(self.build_dir),
            "images": self.images,
            "source": list(self.source),
            **{kind.replace(" ", "_"): list(paths) for kind, paths in self.changes.kinds().items()},
        }


def verify_inputs(build_dir: Path, spec: SourceSpec, fmt: str = "auto", check: str = "stat") -> InputsReport:
    """Compare the images of ``spec`` now with those the build in ``build_dir`` was made from."""
    manifest = require_manifest(build_dir)
    old_listing = read_listing(build_dir / INPUTS)
    if old_listing is None:
        raise IntegrityError(
            f"{build_dir} has no {INPUTS}: it was built by an older capshard; rebuild to record its inputs"
        )
    fmt = detect(spec) if fmt == "auto" else fmt
    old = manifest.identity.to_dict()
    reading = old.get("reading") or {}
    if reading.get("id_column") is not None and spec.id_column is None:
        spec = dataclasses.replace(spec, id_column=reading["id_column"])  # what build's --id column:NAME set
    reader = get_reader(fmt)(spec)
    rows = read_rows(reader.read())
    root = image_root(spec.images, spec.path)
    listing = scan(referenced_paths(rows), root, options=spec.storage_options)
    if check == "content":
        listing = hash_all(listing, root, spec.storage_options)
    changes = compare(old_listing, listing, check)
    # The images are compared path by path above; the rest of the source's identity here.
    new = {**old, "format": fmt, "fingerprint": reader.fingerprint(), "reading": spec.reading_options()}
    others = differences(old, new, check)
    return InputsReport(build_dir, listing.num_rows, changes, tuple(others))
