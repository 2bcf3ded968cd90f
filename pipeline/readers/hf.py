"""The ``hf`` reader: Hugging Face ``datasets`` sources, read as Arrow tables.

Sources: an in-memory ``Dataset``/``DatasetDict`` (``spec.dataset``), a ``save_to_disk``
folder, parquet or ``.arrow`` files (one file or a folder of them), or a hub name that
``datasets`` has cached (never downloaded here). Rows are read from the Arrow data in
batches; image bytes stay in the (memory-mapped) table and rows point at them by
global row index. Which column means what is detected from the usual names
(nlphuji/flickr30k, Karpathy-style, webdataset-style) unless the spec names it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UsageError
from .arrow import (
    ArrowPart,
    ParquetPart,
    Parts,
    TableColumns,
    arrow_rows,
    check_columns,
    is_list,
    missing_column,
)
from .base import ImageUnavailable, Reader, SourceSpec
from .urlpath import SourcePath

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img", "jpg", "png")
CAPTION_COLUMNS = ("caption", "captions", "text", "sentences", "raw")
ID_COLUMNS = ("img_id", "image_id", "imgid", "cocoid", "id")
SPLIT_COLUMNS = ("split",)
CAPTION_ID_COLUMNS = ("sentids",)
FILE_NAME_COLUMNS = ("filename", "file_name")
#: Files ``save_to_disk`` and the ``datasets`` cache write beside the data.
METADATA_FILES = ("state.json", "dataset_dict.json", "dataset_info.json")


class DatasetPart(ArrowPart):
    """One ``datasets.Dataset`` (a split), read through its Arrow format, never decoded."""

    def __init__(self, dataset: Any, label: str, split: str | None, base_dir: Path) -> None:
        super().__init__(label, split, base_dir)
        self.dataset = dataset
        self._views: dict[str, Any] = {}

    @property
    def num_rows(self) -> int:
        return int(self.dataset.num_rows)

    @property
    def schema(self) -> pa.Schema:
        return self.dataset.data.schema

    def batches(self, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        view = self.dataset.select_columns(list(columns)).with_format("arrow")
        for table in view.iter(batch_size=batch_size):  # honours an indices mapping (select, shuffle)
            yield from table.to_batches()

    def fingerprint_into(self, h: Any) -> None:
        """Add this split to a hash through public ``datasets`` API only: its label, rows and
        schema, then the names and sizes of the Arrow files behind it, or, for a dataset held
        in memory (or a row selection of one on disk), the Arrow data itself, as read."""
        h.update(f"{self.label}\0{self.num_rows}\0{self.schema}\n".encode())
        files = [Path(f["filename"]) for f in self.dataset.cache_files]
        if files and self.dataset.data.num_rows == self.num_rows:
            for f in files:
                h.update(f"{f.name}\0{f.stat().st_size}\n".encode())
            return
        for batch in self.batches(self.schema.names, 1000):
            h.update(batch.serialize())

    def cell(self, column: str, row: int) -> Any:
        if column not in self._views:
            self._views[column] = self.dataset.select_columns([column]).with_format("arrow")
        return self._views[column][row].column(0)[0].as_py()


class HFReader(Reader):
    """Hugging Face datasets: nlphuji/flickr30k, flattened one-row-per-caption layouts, and more."""

    name: ClassVar[str] = "hf"

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        if spec.dataset is None and spec.path is None:
            raise UsageError("the hf reader needs a dataset, a path or a hub name")
        self._parts: Parts | None = None
        self._columns: TableColumns | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_parts"] = None  # reopened lazily (memory-mapped) in the worker
        return state

    @classmethod
    def sniff(cls, path: SourcePath) -> bool:
        if not isinstance(path, Path):
            return False  # in object storage: parquet is read by the table reader
        if path.is_dir():
            if any((path / name).is_file() for name in METADATA_FILES):
                return True
            if next(_shallow_glob(path, "*.arrow"), None) is not None:
                return True
            first = next(_shallow_glob(path, "*.parquet"), None)
            return first is not None and _has_hf_metadata(first)
        suffix = path.suffix.lower()
        return path.is_file() and (suffix == ".arrow" or (suffix == ".parquet" and _has_hf_metadata(path)))

    # --- what the source is

    def columns(self) -> TableColumns:
        """The columns used: detected from the usual names unless the spec names them."""
        if self._columns is None:
            self._columns = self._detect(self._open())
        return self._columns

    def multi_caption(self) -> bool:
        return is_list(self._open().parts[0].schema.field(self.columns().caption).type)

    def id_column(self) -> str | None:
        return self.columns().id

    def annotation_files(self) -> list[SourcePath]:
        path = self._local_path()
        if path is None:
            return []
        if _is_saved_dataset(path):
            return sorted(p for p in path.rglob("*") if p.name in METADATA_FILES)
        return [path]

    def fingerprint(self) -> str:
        """For a ``datasets`` object (in memory, saved or cached) each split's rows, schema and
        Arrow files (or in-memory data), plus a saved folder's metadata bytes (base) and the
        names and sizes of its files; for parquet/arrow files, the files' bytes (base)."""
        base = super().fingerprint()
        path = self._local_path()
        if path is not None and not _is_saved_dataset(path):
            return base
        h = hashlib.sha256(base.encode())
        for part in self._open().parts:
            if isinstance(part, DatasetPart):
                part.fingerprint_into(h)
        if path is not None:
            for p in sorted(path.rglob("*")):
                if p.is_file() and p.name not in METADATA_FILES:
                    h.update(f"{p.relative_to(path).as_posix()}\0{p.stat().st_size}\n".encode())
        return "sha256:" + h.hexdigest()

    # --- rows and images

    def rows(self) -> Iterator[dict[str, Any]]:
        parts, cols = self._open(), self.columns()
        log.info(
            "hf: %d rows in %s; columns image=%s caption=%s id=%s split=%s",
            parts.num_rows,
            ", ".join(p.label for p in parts.parts),
            cols.image,
            cols.caption,
            cols.id,
            cols.split,
        )
        yield from arrow_rows(parts, cols, images=self.spec.images, restval=self.spec.restval)

    def image_root(self) -> Path | str | None:
        """``--images``, else the local dataset's folder; an in-memory or hub dataset has none."""
        if self.spec.images is not None:
            return self.spec.images
        path = self._local_path()
        return None if path is None else path if path.is_dir() else path.parent

    def open_image(self, image_path: str | None, image_index: int | None) -> bytes:
        if image_path is not None:
            return self.read_image(image_path)
        if image_index is None:
            raise ImageUnavailable("missing_image", "the row names no image")
        return self._open().image_bytes(self.columns().image, image_index, self.spec.images, self.read_image)

    # --- opening

    def _local_path(self) -> Path | None:
        if self.spec.dataset is not None or self.spec.path is None:
            return None
        path = Path(self.spec.path)
        return path if path.exists() else None

    def _open(self) -> Parts:
        if self._parts is None:
            self._parts = Parts(self._load())
            if not self._parts.parts:
                raise UsageError(f"{self._source_name()}: the dataset has no splits")
        return self._parts

    def _source_name(self) -> str:
        return self.spec.path or self.spec.name or "the dataset"

    def _load(self) -> list[ArrowPart]:
        import datasets

        if self.spec.dataset is not None:
            return _dataset_parts(self.spec.dataset, Path.cwd())
        path = self._local_path()
        if path is None and "://" in str(self.spec.path):
            raise UsageError(
                f"{self.spec.path}: the hf reader reads local datasets only; for parquet files in object "
                "storage use --format table"
            )
        if path is None:
            return _dataset_parts(_load_cached(str(self.spec.path)), Path.cwd())
        if _is_saved_dataset(path):
            return _dataset_parts(datasets.load_from_disk(str(path)), path)
        if path.is_file():
            return [_file_part(path, path.name, None, datasets)]
        return _folder_parts(path, datasets)

    def _detect(self, parts: Parts) -> TableColumns:
        spec, source = self.spec, self._source_name()
        first = parts.parts[0]
        names = first.schema.names

        def pick(given: str | None, candidates: tuple[str, ...], what: str, required: bool) -> str | None:
            if given is not None:
                if given not in names:
                    raise missing_column(source, "", what, given, f"{what}-column", names)
                return given
            found = next((c for c in candidates if c in names), None)
            if found is None and required:
                raise UsageError(
                    f"{source}: no {what} column (looked for {', '.join(candidates)}); "
                    f"columns: {', '.join(names)}; choose one with --{what}-column"
                )
            return found

        image = pick(spec.image_column, IMAGE_COLUMNS, "image", True)
        caption = pick(spec.caption_column, CAPTION_COLUMNS, "caption", True)
        assert image is not None and caption is not None
        listed = is_list(first.schema.field(caption).type)
        caption_id = next(
            (c for c in CAPTION_ID_COLUMNS if c in names and is_list(first.schema.field(c).type) == listed),
            None,
        )
        cols = TableColumns(
            image=image,
            caption=caption,
            id=pick(spec.id_column, ID_COLUMNS, "id", False),
            split=pick(spec.split_column, SPLIT_COLUMNS, "split", False),
            caption_id=caption_id,
            file_name=next((c for c in FILE_NAME_COLUMNS if c in names), None),
        )
        for part in parts.parts:
            missing = [c for c in cols.names() if c not in part.schema.names]
            if missing:
                raise UsageError(
                    f"{source}: split/file {part.label} lacks column(s) {', '.join(missing)}; "
                    f"columns: {', '.join(part.schema.names)}"
                )
            check_columns(part.schema, cols, f"{source} ({part.label})")
        return cols


def _dataset_parts(obj: Any, base_dir: Path) -> list[ArrowPart]:
    """Parts of a ``Dataset`` or ``DatasetDict``, in the dict's split order."""
    import datasets

    if isinstance(obj, datasets.DatasetDict):
        return [DatasetPart(ds, str(name), str(name), base_dir) for name, ds in obj.items()]
    if isinstance(obj, datasets.Dataset):
        split = str(obj.split) if obj.split is not None else None
        return [DatasetPart(obj, split or "data", split, base_dir)]
    if isinstance(obj, datasets.IterableDataset | datasets.IterableDatasetDict):
        raise UsageError("streaming (iterable) datasets cannot be read; load the dataset without streaming=True")
    raise UsageError(f"not a datasets.Dataset or DatasetDict: {type(obj).__name__}")


def _load_cached(name: str) -> Any:
    """A hub dataset from the local ``datasets`` cache; the hub itself is never asked."""
    import datasets
    from datasets.packaged_modules.cache.cache import Cache

    # Only ``name`` or ``namespace/name`` can be hub datasets; anything else is a path that
    # does not exist, and a packaged builder's name ("csv") is taken for a missing file.
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or _is_packaged_builder(name):
        raise UsageError(f"{name!r} is neither a local path nor a cached Hugging Face dataset: no such file or folder")
    try:
        # The builder ``load_dataset`` itself uses offline: it reads the local cache only, so a
        # name that is not cached fails at once instead of downloading.
        builder = Cache(repo_id=name, dataset_name=name.split("/")[-1], version="auto", hash="auto")
        return builder.as_dataset()
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:
        raise UsageError(
            f"{name!r} is neither a local path nor a cached Hugging Face dataset "
            f"(capshard does not download; run datasets.load_dataset({name!r}) once online): {e}"
        ) from None


def _is_packaged_builder(name: str) -> bool:
    """Whether ``datasets`` ships a builder module of this name (csv, json, imagefolder, ...)."""
    if not name.isidentifier():
        return False
    return importlib.util.find_spec(f"datasets.packaged_modules.{name}") is not None


def _file_part(path: Path, label: str, split: str | None, datasets: Any) -> ArrowPart:
    if path.suffix.lower() == ".parquet":
        return ParquetPart(path, label, split, path.parent)
    try:
        dataset = datasets.Dataset.from_file(str(path))  # memory-mapped, no copy
    except (OSError, pa.ArrowInvalid) as e:
        raise UsageError(f"{path}: not a readable Arrow file: {e}") from None
    return DatasetPart(dataset, label, split, path.parent)


def _folder_parts(path: Path, datasets: Any) -> list[ArrowPart]:
    """Parquet (else arrow) files under ``path``, split by their names as ``datasets`` does."""
    from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns

    path = path.absolute()  # ``datasets`` lists files by absolute path
    suffix = ".parquet" if next(path.rglob("*.parquet"), None) is not None else ".arrow"
    try:
        patterns = get_data_patterns(str(path))
    except EmptyDatasetError:
        patterns = {}
    by_split = DataFilesDict.from_patterns(patterns, base_path=str(path)) if patterns else {}
    parts: list[ArrowPart] = []
    for split, files in by_split.items():
        for f in sorted(Path(f) for f in files if str(f).lower().endswith(suffix)):
            parts.append(_file_part(f, f.relative_to(path).as_posix(), str(split), datasets))
    if not parts:
        raise UsageError(f"{path}: no save_to_disk dataset, .parquet or .arrow files here")
    return parts


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _shallow_glob(path: Path, pattern: str) -> Iterator[Path]:
    """Matches in ``path`` and one level down (the hub's ``data/`` layout), cheaply."""
    yield from sorted(path.glob(pattern))
    yield from sorted(path.glob(f"*/{pattern}"))


def _has_hf_metadata(path: Path) -> bool:
    """Whether a parquet file's schema metadata carries the ``huggingface`` key (footer only)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return False
    return b"huggingface" in metadata
