"""capshard: image-caption datasets to grouped WebDataset shards, and a loader with explicit positives.

The import name is ``pipeline``; the distribution and the command are ``capshard``.
Nothing imported here pulls in torch: the ETL never needs it.
"""

__version__ = "0.1.0"
FORMAT_VERSION = "capshard/1"

__all__ = ["FORMAT_VERSION", "__version__"]
