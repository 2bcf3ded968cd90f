"""A build's identity, and what differs between two of them.

The identity decides whether ``--out`` already holds this build (a no-op, or a resume)
or another one (refused unless ``--overwrite``): the shard format version, the source
format, the annotation fingerprint, the inputs listing's digests (:mod:`pipeline.inputs`),
the reading options and the output options. :func:`differences` says, one item per
field, what changed (``seed: 0 -> 1``; ``source: 1 image changed: imgs/a.jpg``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from .format import BuildIdentity
from .inputs import InputChanges, compare, hash_all, summary

#: Identity sections whose fields are compared one by one, named by their own keys.
FIELD_SECTIONS = ("reading", "options")


def make_identity(
    *,
    format_version: str,
    fmt: str,
    fingerprint: str,
    inputs: dict[str, Any],
    reading: dict[str, Any],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The identity of a build (saved in ``.capshard/state.json``; its parts in the manifest,
    whose :attr:`~pipeline.format.Manifest.identity` reads it back)."""
    return BuildIdentity(format_version, fmt, fingerprint, options, inputs, reading).to_dict()


def default_version(identity: dict[str, Any]) -> str:
    """The dataset version when none is given: 12 hex digits over the annotations and the image bytes
    (and the ``--captions`` files, when there are any)."""
    inputs = identity.get("inputs") or {}
    text = f"{identity['fingerprint']}\n{inputs.get('content') or ''}"
    extra = [c["sha256"] for c in (identity.get("reading") or {}).get("captions") or ()]
    if extra:
        text += "\n" + "\n".join(extra)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def differences(
    old: dict[str, Any],
    new: dict[str, Any],
    check: str = "stat",
    image_changes: Callable[[], InputChanges | None] = lambda: None,
) -> list[str]:
    """What differs from ``old`` to ``new``, one ``field: old -> new`` item each; empty when the same.

    Images are compared by the ``check`` digest (``stat`` or ``content``; ``new`` must carry
    it). When they differ, ``image_changes()`` may name the images (from the two listings).
    """
    diffs: list[str] = []
    for key, label in (("format_version", "shard format"), ("format", "format")):
        if old.get(key) != new.get(key):
            diffs.append(f"{label}: {_show(old.get(key))} -> {_show(new.get(key))}")
    if old.get("fingerprint") != new.get("fingerprint"):
        diffs.append("source: annotation files changed")
    diffs.extend(_image_difference(old.get("inputs"), new.get("inputs"), check, image_changes))
    for section in FIELD_SECTIONS:
        before, after = old.get(section) or {}, new.get(section) or {}
        for name in [*after, *(k for k in before if k not in after)]:
            if before.get(name) != after.get(name):
                diffs.append(f"{name}: {_show(before.get(name))} -> {_show(after.get(name))}")
    return diffs


def _image_difference(
    old: dict[str, Any] | None,
    new: dict[str, Any] | None,
    check: str,
    image_changes: Callable[[], InputChanges | None],
) -> list[str]:
    if not old:
        return ["source: images not recorded (a build by an older capshard)"]
    assert new is not None and new.get(check) is not None, f"the new identity lacks its {check} digest"
    if old.get("images") == new.get("images") and old.get(check) == new.get(check):
        return []
    if old.get(check) is None:
        return [f"source: the build recorded no {check} digest of its images"]
    changes = image_changes()
    if changes:
        return [f"source: {changes.describe()}"]
    return [f"source: images differ ({old.get('images')} -> {new.get('images')} listed)"]


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def input_check(
    identity: dict[str, Any], listing: pa.Table, check: str, root: str, options: Mapping[str, Any] | None = None
) -> Callable[[dict[str, Any], pa.Table | None], list[str]]:
    """``differs(old_identity, old_listing)``: the :func:`differences` of this build's identity
    from an earlier one. For ``content`` the images are hashed once, on first use."""
    hashed: list[tuple[dict[str, Any], pa.Table]] = []

    def current() -> tuple[dict[str, Any], pa.Table]:
        if check != "content":
            return identity, listing
        if not hashed:
            now = hash_all(listing, root, options)
            hashed.append(({**identity, "inputs": summary(now)}, now))
        return hashed[0]

    def differs(old: dict[str, Any], old_listing: pa.Table | None) -> list[str]:
        new, new_listing = current()
        return differences(
            old, new, check, lambda: None if old_listing is None else compare(old_listing, new_listing, check)
        )

    return differs
