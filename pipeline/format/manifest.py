"""The manifest's shape as frozen dataclasses: :meth:`Manifest.to_dict` gives what a build
writes, :meth:`Manifest.from_dict` validates a parsed one, raising :class:`ManifestError`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import FORMAT_VERSION
from ..errors import CapshardError, SourceError
from .names import MANIFEST, MANIFEST_KEYS, SHARD_NAME


class ManifestError(SourceError):
    """A manifest that cannot be read or is not ``capshard/1``: ``FILE DETAIL`` on one line."""

    def __init__(self, file: object, detail: str) -> None:
        self.file = str(file)
        self.where = None
        self.detail = detail
        # Not SourceError's FILE:WHERE: form: most faults are of the whole file (too big, not JSON).
        CapshardError.__init__(self, f"{file} {detail}")


def _damaged(file: str, where: str, what: str) -> ManifestError:
    return ManifestError(file, f"is damaged at {where}: {what}")


def _count(value: Any, file: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _damaged(file, where, f"{_short(value)} is not a count")
    return value


def _text(value: Any, file: str, where: str) -> str:
    if not isinstance(value, str):
        raise _damaged(file, where, f"{_short(value)} is not text")
    return value


def _object(value: Any, file: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _damaged(file, where, "missing or not an object")
    return value


def _optional_object(value: Any, file: str, where: str) -> dict[str, Any] | None:
    return None if value is None else _object(value, file, where)


def _short(value: Any) -> str:
    return ascii(value)[:80]


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest lists it."""

    name: str
    images: int
    captions: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "images": self.images, "captions": self.captions, "bytes": self.bytes,
                "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Any, file: str, where: str, check_name: bool = True) -> ShardEntry:
        """A shard entry; with ``check_name`` its name must be ``SPLIT-NNNNNN.tar`` (a manifest is
        data: a name like ``../x`` or ``/etc/passwd`` must not choose what is read)."""
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise _damaged(file, where, "not a shard entry named SPLIT-NNNNNN.tar")
        if check_name and not SHARD_NAME.fullmatch(d["name"]):
            raise _damaged(file, where, f"not a shard entry named SPLIT-NNNNNN.tar ({_short(d['name'])})")
        return cls(d["name"], _count(d.get("images"), file, f"{where}.images"),
                   _count(d.get("captions"), file, f"{where}.captions"),
                   _count(d.get("bytes"), file, f"{where}.bytes"), _text(d.get("sha256"), file, f"{where}.sha256"))


@dataclass(frozen=True)
class SplitEntry:
    """One split: its image and caption counts and its shards in name order."""

    images: int
    captions: int
    shards: tuple[ShardEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "captions": self.captions, "shards": [s.to_dict() for s in self.shards]}

    @classmethod
    def from_dict(cls, d: Any, file: str, where: str, check_names: bool = True) -> SplitEntry:
        d = _object(d, file, where)
        shards = d.get("shards")
        if not isinstance(shards, list):
            raise _damaged(file, f"{where}.shards", "missing or not a list")
        return cls(
            _count(d.get("images"), file, f"{where}.images"),
            _count(d.get("captions"), file, f"{where}.captions"),
            tuple(ShardEntry.from_dict(s, file, f"{where}.shards[{i}]", check_names) for i, s in enumerate(shards)),
        )


@dataclass(frozen=True)
class Counts:
    """Input caption rows, and where they went: images and captions in shards, rows rejected."""

    rows: int
    images: int
    captions: int
    rejected_rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "images": self.images, "captions": self.captions,
                "rejected_rows": self.rejected_rows}

    @classmethod
    def from_dict(cls, d: Any, file: str) -> Counts:
        d = _object(d, file, "counts")
        return cls(*(_count(d.get(k), file, f"counts.{k}") for k in ("rows", "images", "captions", "rejected_rows")))


@dataclass(frozen=True)
class Rejects:
    """Rows in ``rejects.jsonl`` and how many per reason."""

    rows: int
    by_reason: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "by_reason": dict(self.by_reason)}

    @classmethod
    def from_dict(cls, d: Any, file: str) -> Rejects:
        d = _object(d, file, "rejects")
        by_reason = _object(d.get("by_reason"), file, "rejects.by_reason")
        return cls(_count(d.get("rows"), file, "rejects.rows"),
                   {k: _count(v, file, f"rejects.by_reason.{k}") for k, v in by_reason.items()})


@dataclass(frozen=True)
class ResolutionReport:
    """How image identity was resolved (:mod:`pipeline.resolve`); ``details`` holds what later
    stages add to the section (``near_duplicates`` from :mod:`pipeline.decontam`, ...)."""

    strategy: str
    merged_ids: int
    conflicts: int
    notes: tuple[str, ...]
    id_source: str | None = None
    duplicate_content: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        known = {"strategy": self.strategy, "id_source": self.id_source, "merged_ids": self.merged_ids,
                 "conflicts": self.conflicts, "duplicate_content": self.duplicate_content, "notes": list(self.notes)}
        return {**{k: v for k, v in known.items() if v is not None}, **self.details}

    @classmethod
    def from_dict(cls, d: Any, file: str) -> ResolutionReport:
        d = _object(d, file, "resolution")
        notes = d.get("notes")
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise _damaged(file, "resolution.notes", "not a list of text")
        dup = d.get("duplicate_content")
        return cls(
            strategy=_text(d.get("strategy"), file, "resolution.strategy"),
            merged_ids=_count(d.get("merged_ids"), file, "resolution.merged_ids"),
            conflicts=_count(d.get("conflicts"), file, "resolution.conflicts"),
            notes=tuple(notes),
            id_source=None if d.get("id_source") is None else _text(d["id_source"], file, "resolution.id_source"),
            duplicate_content=None if dup is None else _count(dup, file, "resolution.duplicate_content"),
            details={k: v for k, v in d.items() if k not in _RESOLUTION_FIELDS},
        )


_RESOLUTION_FIELDS = ("strategy", "id_source", "merged_ids", "conflicts", "duplicate_content", "notes")


@dataclass(frozen=True)
class BuildIdentity:
    """What decides whether a folder already holds this build (:mod:`pipeline.identity`): saved
    whole in ``.capshard/state.json`` while a build runs, and as parts of its manifest after."""

    format_version: str
    format: str
    fingerprint: str
    options: Mapping[str, Any]
    inputs: Mapping[str, Any] | None = None
    reading: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "format": self.format, "fingerprint": self.fingerprint,
                "inputs": self.inputs, "reading": self.reading, "options": self.options}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BuildIdentity:
        return cls(d["format_version"], d["format"], d["fingerprint"], d["options"], d.get("inputs"), d.get("reading"))


@dataclass(frozen=True)
class Manifest:
    """A build's ``manifest.json`` (DESIGN.md): the commit marker, written last.

    ``extra`` keeps the top-level sections written after the build (``sidecars`` by
    ``capshard hash``) and any this version does not know, as they are."""

    identity: BuildIdentity
    name: str
    version: str
    source_path: str | None
    counts: Counts
    splits: Mapping[str, SplitEntry]
    captions_per_image: Mapping[str, int]
    resolution: ResolutionReport
    rejects: Rejects
    tool: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Seconds, images/s and MB/s of the run's long stages (:mod:`pipeline.stats`); differs run
    #: to run, so nothing that decides identity or checks a build reads it.
    stats: Mapping[str, Any] | None = None

    @property
    def shards(self) -> tuple[ShardEntry, ...]:
        """Every shard, split by split in manifest order."""
        return tuple(s for split in self.splits.values() for s in split.shards)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as written: ``write_manifest(out, m.to_dict())``."""
        ident = self.identity
        source: dict[str, Any] = {"path": self.source_path, "format": ident.format, "fingerprint": ident.fingerprint}
        source.update({k: v for k, v in (("reading", ident.reading), ("inputs", ident.inputs)) if v is not None})
        head = {"format": ident.format_version, "name": self.name, "version": self.version}
        return {
            **head,
            **({"tool": self.tool} if self.tool is not None else {}),
            "source": source,
            "options": ident.options,
            "counts": self.counts.to_dict(),
            "splits": {name: split.to_dict() for name, split in self.splits.items()},
            "groups": {"captions_per_image": dict(self.captions_per_image)},
            "resolution": self.resolution.to_dict(),
            "rejects": self.rejects.to_dict(),
            **self.extra,
            **({"stats": dict(self.stats)} if self.stats is not None else {}),
        }

    @classmethod
    def from_dict(cls, doc: Any, file: str = MANIFEST, *, check_names: bool = True) -> Manifest:
        """Validate a parsed manifest; :class:`ManifestError` names ``file`` and the first fault.
        ``check_names=False`` keeps unsafe shard names for a caller that reports them itself."""
        _check_head(doc, file)
        source = _object(doc["source"], file, "source")
        identity = BuildIdentity(
            format_version=doc["format"],
            format=_text(source.get("format"), file, "source.format"),
            fingerprint=_text(source.get("fingerprint"), file, "source.fingerprint"),
            options=_object(doc["options"], file, "options"),
            inputs=_optional_object(source.get("inputs"), file, "source.inputs"),
            reading=_optional_object(source.get("reading"), file, "source.reading"),
        )
        path = source.get("path")
        splits = _object(doc["splits"], file, "splits")
        groups = _object(_object(doc["groups"], file, "groups").get("captions_per_image"), file,
                         "groups.captions_per_image")
        return cls(
            identity=identity,
            name=_text(doc["name"], file, "name"),
            version=_text(doc["version"], file, "version"),
            source_path=None if path is None else _text(path, file, "source.path"),
            counts=Counts.from_dict(doc["counts"], file),
            splits={k: SplitEntry.from_dict(v, file, f"splits.{k}", check_names) for k, v in splits.items()},
            captions_per_image={k: _count(v, file, f"groups.captions_per_image.{k}") for k, v in groups.items()},
            resolution=ResolutionReport.from_dict(doc["resolution"], file),
            rejects=Rejects.from_dict(doc["rejects"], file),
            tool=None if doc.get("tool") is None else _text(doc["tool"], file, "tool"),
            extra={k: v for k, v in doc.items() if k not in MANIFEST_KEYS and k not in ("tool", "stats")},
            stats=_optional_object(doc.get("stats"), file, "stats"),
        )


def _check_head(doc: Any, file: str) -> None:
    """A JSON object with every top-level key, of this format version."""
    if not isinstance(doc, dict):
        raise ManifestError(file, f"is not a {FORMAT_VERSION} manifest (not a JSON object)")
    missing = [k for k in MANIFEST_KEYS if k not in doc]
    if missing:
        raise ManifestError(file, f"is not a {FORMAT_VERSION} manifest (missing {', '.join(missing)})")
    if doc["format"] != FORMAT_VERSION:
        raise ManifestError(file, f"is not a {FORMAT_VERSION} manifest (format {_short(doc['format'])})")

