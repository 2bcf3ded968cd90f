"""The names in a ``capshard/1`` build folder (DESIGN.md, docs/FORMAT.md), and the caps on reading its manifest."""

from __future__ import annotations

import re

MANIFEST = "manifest.json"
INDEX = "index.parquet"
REJECTS = "rejects.jsonl"
#: ``{"shard.tar": images}``: how open_clip's trainer counts webdataset samples.
SIZES = "sizes.json"
#: The listing of the input files and their digests (:mod:`pipeline.inputs`).
INPUTS = "inputs.parquet"
#: The perceptual-hash sidecar ``capshard hash`` writes (:mod:`pipeline.hashes`).
PHASH = "phash.parquet"
#: A build's working state while it runs; removed once the manifest is written.
STATE = ".capshard"
#: Inside ``STATE``: the identity of the planned build, written last when planning.
STATE_FILE = "state.json"
#: Inside ``STATE``: one ``NAME.json`` record per written shard.
DONE = "done"
#: Inside ``STATE``: the shards a one-pass build wrote as it probed their images, each with its
#: ``NAME.json`` record, and ``identity.json``, the build they belong to (:mod:`pipeline.write_ahead`).
AHEAD = "ahead"
#: Inside ``STATE``: the names of every file the build created (:mod:`pipeline.outputs`).
LEDGER = "ledger.txt"
#: The build folder's lock file (:mod:`pipeline.lock`).
LOCK = ".capshard.lock"
#: Where ``capshard hash`` keeps the parts of an unfinished run.
HASH_PARTS = ".capshard-hash"

#: A shard's name: ``{split}-{000000}.tar``; a manifest naming anything else is refused.
SHARD_NAME = re.compile(r"[A-Za-z0-9_]+-[0-9]{6}\.tar")

#: Top-level keys every manifest has (DESIGN.md).
MANIFEST_KEYS = (
    "format",
    "name",
    "version",
    "source",
    "options",
    "counts",
    "splits",
    "groups",
    "resolution",
    "rejects",
)
#: The largest manifest read (bytes): about a million shards.
MAX_MANIFEST_BYTES = 256 << 20
#: The deepest JSON nesting parsed, in a manifest or a shard's JSON member (a manifest nests 5 levels).
MAX_JSON_DEPTH = 16
