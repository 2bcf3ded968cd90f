"""Build options (pipeline.config, pipeline.idspec): parsed and validated once, errors in one line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import EXECUTOR_NAMES, BuildConfig
from pipeline.errors import UsageError
from pipeline.idspec import ID_STRATEGIES, IdSpec, parse_id


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("auto", IdSpec("auto", "auto")),
        ("content", IdSpec("content", "content")),
        ("filename", IdSpec("filename", "filename")),
        ("column:img_id", IdSpec("column:img_id", "column", "img_id")),
        ("column:a:b", IdSpec("column:a:b", "column", "a:b")),
    ],
)
def test_every_id_strategy_parses_into_its_spec(text: str, spec: IdSpec) -> None:
    assert parse_id(text) == spec
    config = BuildConfig(out=Path("x"), id=text)
    assert config.id_spec == spec
    assert config.output_options()["id"] == text  # the manifest keeps the value as given
    assert config.id_column == spec.column


@pytest.mark.parametrize("text", ["guess", "", "column", "column:", "filename:x", "auto:", "Auto"])
def test_a_bad_id_is_one_line_naming_every_valid_value(text: str) -> None:
    with pytest.raises(UsageError) as e:
        BuildConfig(out=Path("x"), id=text)
    message = str(e.value)
    assert "\n" not in message
    assert message == f"--id must be one of auto, content, filename or column:NAME, not {text!r}"


def test_what_each_strategy_means() -> None:
    assert set(ID_STRATEGIES) == {"auto", "content", "filename", "column"}
    assert parse_id("auto").by_content and parse_id("content").by_content
    assert not parse_id("filename").by_content and not parse_id("column:k").by_content
    assert parse_id("filename").missing_reason == "no_file_name"
    assert parse_id("column:k").missing_reason == "no_image_id"
    assert parse_id("auto").missing_reason is None


def test_replace_parses_the_new_id_again() -> None:
    config = dataclasses.replace(BuildConfig(out=Path("x")), id="column:key")
    assert config.id_spec.column == "key"


def test_executor_names_match_the_executors_and_config_does_not_import_them() -> None:
    from pipeline.executors import EXECUTORS

    assert tuple(EXECUTORS) == EXECUTOR_NAMES
    code = "import sys, pipeline.config; sys.exit('pipeline.executors' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    with pytest.raises(UsageError, match=r"^--executor must be one of process, ray, not 'dask'$"):
        BuildConfig(out=Path("x"), executor="dask")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_images_per_shard": 0}, "--max-images-per-shard must be at least 1"),
        ({"seed": -1}, "--seed must be 0 or more"),
        ({"resize": 4}, "--resize must be at least 8 pixels"),
        ({"on_leak": "ignore"}, "--on-leak must be one of fail, reject, not 'ignore'"),
        ({"max_reject_fraction": 1.5}, "--max-reject-fraction must be between 0 and 1"),
        ({"near_threshold": 40}, "--threshold must be between 0 and 32"),
    ],
)
def test_out_of_range_options_are_one_line_usage_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as e:
        BuildConfig(out=Path("x"), **options)  # type: ignore[arg-type]
    assert str(e.value) == message


def test_output_options_name_near_duplicates_only_when_hashing() -> None:
    assert "near_duplicates" not in BuildConfig(out=Path("x")).output_options()
    near = BuildConfig(out=Path("x"), phash=True).output_options()["near_duplicates"]
    assert near == {"phash": True, "exclude_near": [], "near_threshold": 8, "on_near_leak": "report"}
