"""The capshard/1 on-disk contract (minimal: shard names; the full module lands with issue 8)."""

import re

#: A shard file name: ``SPLIT-NNNNNN.tar``.
SHARD_NAME = re.compile(r"[A-Za-z0-9_]+-[0-9]{6}\.tar")
