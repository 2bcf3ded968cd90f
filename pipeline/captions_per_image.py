"""``captions_per_image``: how many captions of each image a batch carries (K >= 1, or all).

One value type, parsed once wherever the option enters (the loader's options, the CLI's
``--captions-per-image``, ``diagnose`` and ``smoke-train``), so every entry point accepts
and refuses the same values with the same message. Light on purpose: no torch, no click.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

ALL: Literal["all"] = "all"


@dataclass(frozen=True)
class CaptionsPerImage:
    """``count`` captions of each image, or every caption when ``count`` is None."""

    count: int | None

    @classmethod
    def parse(cls, value: CaptionsPerImage | int | str) -> CaptionsPerImage:
        """``"all"``, a positive int, or its decimal text; ValueError (one line) otherwise."""
        if isinstance(value, CaptionsPerImage):
            return value
        if value == ALL:
            return cls(None)
        number: object = value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = int(value)
        if isinstance(number, int) and not isinstance(number, bool) and number >= 1:
            return cls(number)
        raise ValueError(f"{value!r} is neither a positive integer nor 'all'")

    @property
    def value(self) -> int | Literal["all"]:
        """The plain form: the int K, or ``"all"`` (what JSON reports and the API take)."""
        return ALL if self.count is None else self.count

    def __str__(self) -> str:
        return str(self.value)
