"""Image id strategies (``--id``): the table of them, and the one parser of an ``--id`` value.

``--id`` is ``auto``, ``content``, ``filename`` or ``column:NAME``. The value is parsed
once, where the build's options are validated, into an :class:`IdSpec`; the stages ask
the spec, never the string. The string itself stays what the user gave: it is recorded
in the manifest (``options.id``) and is part of a build's identity.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class IdStrategy:
    """What one strategy means for *resolve*."""

    #: Identity is the content hash (two ids with the same bytes are one image).
    by_content: bool
    #: The reject reason of a row without the name the strategy needs; None: nothing is needed.
    missing_reason: str | None
    #: Written ``NAME:VALUE`` (``column:NAME``) rather than as a bare name.
    takes_value: bool = False


#: ``--id`` strategy name → what it means; see :mod:`pipeline.resolve` for how each names images.
ID_STRATEGIES: dict[str, IdStrategy] = {
    "auto": IdStrategy(by_content=True, missing_reason=None),
    "content": IdStrategy(by_content=True, missing_reason=None),
    "filename": IdStrategy(by_content=False, missing_reason="no_file_name"),
    "column": IdStrategy(by_content=False, missing_reason="no_image_id", takes_value=True),
}


@dataclass(frozen=True)
class IdSpec:
    """A parsed ``--id``: ``text`` as given, the strategy's ``name`` and, for ``column:NAME``, the column."""

    text: str
    name: str
    column: str | None = None

    @property
    def strategy(self) -> IdStrategy:
        return ID_STRATEGIES[self.name]

    @property
    def by_content(self) -> bool:
        """Whether identity is the content hash (``auto``, ``content``)."""
        return self.strategy.by_content

    @property
    def missing_reason(self) -> str | None:
        """The reject reason of a row that lacks the id this strategy trusts."""
        return self.strategy.missing_reason


def valid_values() -> str:
    """The valid ``--id`` values, for messages: ``auto, content, filename or column:NAME``."""
    names = [f"{n}:NAME" if s.takes_value else n for n, s in ID_STRATEGIES.items()]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def parse_id(text: str) -> IdSpec:
    """Parse an ``--id`` value; anything else is a one-line :class:`UsageError` listing the valid ones."""
    name, sep, value = text.partition(":")
    strategy = ID_STRATEGIES.get(name)
    if strategy is None or bool(sep) != strategy.takes_value or (strategy.takes_value and not value):
        raise UsageError(f"--id must be one of {valid_values()}, not {text!r}")
    return IdSpec(text, name, value if strategy.takes_value else None)
