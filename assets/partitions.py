"""The ``images`` dynamic partitions, and the one place run tags for partitions are spelt.

Keys are made by :func:`assets.incoming.partition_key_for` (documented there):
``<slug of the relative path>-<10 hex digits of its SHA-256>``, for example
``cats-tabby-1-jpg-1f0c2d9e4a``, using only ``a-z``, ``0-9`` and ``-``.
"""

from collections.abc import Mapping, Sequence

import dagster as dg

from .names import PARTITION_TAG, PARTITIONS_NAME, RANGE_END_TAG, RANGE_START_TAG

__all__ = ["IMAGES", "batches", "partitions_of_tags", "run_tags_for"]

#: One partition per image of the incoming folder.
IMAGES = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)


def run_tags_for(first: str, last: str) -> dict[str, str]:
    """The run tags that select partitions ``first`` to ``last`` (one, or a range)."""
    if first == last:
        return {PARTITION_TAG: first}
    return {RANGE_START_TAG: first, RANGE_END_TAG: last}


def partitions_of_tags(tags: Mapping[str, str], order: Sequence[str]) -> list[str]:
    """The partitions a run with ``tags`` covers, given the partition ``order``.

    A range whose ends are no longer registered covers nothing.
    """
    if PARTITION_TAG in tags:
        return [tags[PARTITION_TAG]]
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    index = {key: i for i, key in enumerate(order)}
    if start in index and end in index:
        return list(order[index[start] : index[end] + 1])
    return []


def batches(order: Sequence[str], wanted: set[str], size: int) -> list[tuple[str, str]]:
    """Contiguous runs of ``wanted`` in partition ``order``, each cut to at most ``size``."""
    ranges, current = [], []
    for key in order:
        if key in wanted and len(current) < size:
            current.append(key)
            continue
        if current:
            ranges.append((current[0], current[-1]))
        current = [key] if key in wanted else []
    if current:
        ranges.append((current[0], current[-1]))
    return ranges
