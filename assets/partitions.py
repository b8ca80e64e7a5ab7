"""The ``images`` dynamic partitions: one partition per image file.

Keys are made by :func:`assets.incoming.partition_key_for` (documented there):
``<slug of the relative path>-<10 hex digits of its SHA-256>``, for example
``cats-tabby-1-jpg-1f0c2d9e4a``, using only ``a-z``, ``0-9`` and ``-``.
"""

import dagster as dg

from .incoming import is_valid_partition_key, partition_key_for
from .keys import PARTITIONS_NAME

__all__ = ["IMAGES", "is_valid_partition_key", "partition_key_for"]

#: One partition per image of the incoming folder.
IMAGES = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)
