"""The columnar Flickr path gives the same rows, errors and warnings as the row-by-row one."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import SourceError
from pipeline.readers.base import SourceSpec
from pipeline.readers.flickr import FlickrReader
from pipeline.readers.flickr_columns import _split_lines
from pipeline.schema import CAPTION_ROWS, batches_from_rows

FILES = {
    "crlf_blank_space.token.txt": (
        b"\xef\xbb\xbfa.jpg#0\tA dog .\r\n\r\n  \na.jpg#1 A cat\t.\r\nb/c.jpg#2\t\r\nd#1#2\tx\n\x0b\n"
    ),
    "nbsp_caption.token.txt": b"a.jpg#0\tx\r\r\nb.jpg#0\ty\xc2\xa0\n",
    "nbsp_name.token.txt": b"a.jpg#0\tx\n\xc2\xa0a.jpg#1\tz\n",
    "not_utf8.token.txt": b"a.jpg#0\tbad \xff caption\nb.jpg#0\tok\n",
    "no_number.token.txt": b"a.jpg#0\tA dog .\nthis line has no number\n",
    "captions.txt": b'image,caption\na.jpg,"A dog, running"\na.jpg,plain\n\nb.jpg,"say ""hi"""\na.jpg,\n',
    "extra_field/captions.txt": b"image,caption\na.jpg,A dog, running\n",
    "multiline/captions.txt": b'image,caption\na.jpg,"multi\nline"\nb.jpg,x\n',
    "crlf/captions.txt": b"image,caption\r\na.jpg,x\r\n",
    "space_line/captions.txt": b"image,caption\na.jpg,x\n \nb.jpg,y\n",
    "results.csv": b"image_name| comment_number| comment\n1.jpg| 0| A dog .\n"
    b"2199200615.jpg| 4   A dog runs across the grass .\n 3.jpg |  1 | x|y\n\n",
    "bad_number/results.csv": b"image_name|comment_number|comment\n1.jpg|0| A dog .\n1.jpg|x|bad\n",
    "no_name/results.csv": b"image_name| comment_number| comment\n  | 0| A dog .\n",
}


def _read(reader: FlickrReader, columnar: bool) -> tuple[object, list[str]]:
    handler = _Collect()
    logging.getLogger("pipeline").addHandler(handler)
    try:
        batches = reader.read() if columnar else batches_from_rows(reader.rows())
        result: object = pa.Table.from_batches(list(batches), schema=CAPTION_ROWS).to_pylist()
    except SourceError as e:
        result = str(e)
    finally:
        logging.getLogger("pipeline").removeHandler(handler)
    return result, handler.messages


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("name", sorted(FILES))
@pytest.mark.parametrize("with_splits", [False, True])
def test_columnar_and_row_paths_agree(tmp_path: Path, name: str, with_splits: bool) -> None:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(FILES[name])
    (tmp_path / "images").mkdir()
    (tmp_path / "train.txt").write_text("a.jpg\nb.jpg\n1.jpg\n")
    (tmp_path / "test.txt").write_text("zzz.jpg\n")
    splits = (("train", tmp_path / "train.txt"), ("test", tmp_path / "test.txt")) if with_splits else ()
    reader = FlickrReader(SourceSpec(path=str(path), images=tmp_path / "images", split_files=splits))
    assert _read(reader, columnar=True) == _read(reader, columnar=False)


def test_real_files_agree(real_data: Path, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for name in ("Flickr8k.token.txt", "captions.txt"):
        reader = FlickrReader(SourceSpec(path=str(real_data / name), images=tmp_path / "images"))
        path = real_data / name
        assert FlickrReader._columnar_records(path, FlickrReader._layout(path)) is not None  # the fast path
        columnar, row_by_row = _read(reader, columnar=True), _read(reader, columnar=False)
        assert isinstance(columnar[0], list) and len(columnar[0]) > 40_000
        assert columnar == row_by_row


#: Token-file lines: well formed (either separator), blank by Python's or only RE2's idea of space.
_LINES = st.one_of(
    st.builds(
        "{}#{}{}{}".format,
        st.sampled_from(["a.jpg", "b.png", "d#1", "é.jpg"]),
        st.integers(0, 12),
        st.sampled_from(["\t", " "]),
        st.text(alphabet=" \t\xa0\u2028ab.é#\r", max_size=6),
    ),
    st.sampled_from(["", " ", "\xa0", "\t", "\u2028 ", "\x0b"]),
)
_FILES = st.lists(st.tuples(_LINES, st.sampled_from(["\n", "\r\n", "\r\r\n"])), max_size=12).map(
    lambda lines: "".join(line + end for line, end in lines)
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_FILES)
def test_columnar_and_row_paths_agree_on_any_token_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "any.token.txt"
    path.write_bytes(text.encode())
    (tmp_path / "images").mkdir(exist_ok=True)
    reader = FlickrReader(SourceSpec(path=str(path), images=tmp_path / "images"))
    assert _read(reader, columnar=True) == _read(reader, columnar=False)


@given(st.text(alphabet="ab\r\n\t é日\x00", max_size=40))
def test_lines_are_cut_as_python_cuts_them(text: str) -> None:
    # Every line of the file, the last one too (empty after a final newline), less one "\r" at its end.
    assert _split_lines(text.encode()).to_pylist() == [line.removesuffix("\r") for line in text.split("\n")]
