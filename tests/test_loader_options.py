"""LoaderOptions and CaptionsPerImage: one checked options object, the same through every door."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import loader_fixtures as fx
import pytest
from loader_fixtures import signature

from pipeline.captions_per_image import CaptionsPerImage
from pipeline.errors import UsageError
from pipeline.loader import LoaderOptions, make_loader

five = pytest.fixture(scope="module", name="five")(fx.build_five)


def test_an_options_object_and_keyword_arguments_give_the_same_batches(five: Path) -> None:
    kwargs = {"split": "train", "batch_size": 8, "captions_per_image": 2, "image_size": 8, "num_workers": 0}
    options = LoaderOptions(**kwargs)
    by_object = make_loader(five, options)
    assert by_object.options == options
    assert signature(by_object) == signature(make_loader(five, **kwargs))
    # Keyword arguments override fields of a given object, checked by the same code.
    wider = make_loader(five, options, captions_per_image="all")
    assert wider.options.captions == CaptionsPerImage(None) and wider.options.batch_size == 8
    with pytest.raises(UsageError, match="batch_size"):
        make_loader(five, options, batch_size=0)


def test_options_are_checked_once_on_creation_and_frozen() -> None:
    o = LoaderOptions(split=None, batch_size=4, captions_per_image="3", image_size=(8, 16), num_workers=1)
    assert o.captions == CaptionsPerImage(3) and o.size == (8, 16) and o.workers == 1
    assert dataclasses.replace(o) == o  # normalised values pass their own check again
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.batch_size = 5  # type: ignore[misc]
    bad = {
        "captions_per_image": 0,
        "caption_shortfall": "pad",
        "verify": "md5",
        "handler": "ignore",
        "on_bad_shard": "retry",
        "image_size": (0, 4),
        "shuffle_window": 0,
        "max_member_bytes": 0,
    }
    for name, value in bad.items():
        with pytest.raises(UsageError, match=name):
            LoaderOptions(split="train", batch_size=4, **{name: value})
    with pytest.raises(TypeError, match="unexpected keyword"):
        LoaderOptions(split="train", batch_size=4, shuffle_buffer=10)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        LoaderOptions("train", 4)  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize(("given", "count"), [("all", None), (1, 1), ("5", 5), (CaptionsPerImage(2), 2)])
def test_captions_per_image_parses_once(given: object, count: int | None) -> None:
    k = CaptionsPerImage.parse(given)  # type: ignore[arg-type]
    assert k.count == count and CaptionsPerImage.parse(k) is k
    assert str(k) == ("all" if count is None else str(count))


@pytest.mark.parametrize("given", [0, -1, True, "none", "2.5", 2.0])
def test_captions_per_image_refuses_in_one_line(given: object) -> None:
    with pytest.raises(ValueError, match=r"is neither a positive integer nor 'all'$"):
        CaptionsPerImage.parse(given)  # type: ignore[arg-type]
