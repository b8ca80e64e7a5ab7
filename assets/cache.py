"""Cache keys: what each step's output depends on, hashed (no Dagster import).

A step's cache key is the SHA-256 of a canonical JSON document holding the asset
name, its code version, its inputs' cache keys (in a fixed order) and the
settings that change its result. The chain starts at the SHA-256 of the image
file's bytes, so the key of every step is a function of the file's content, the
settings and the code, and nothing else: :func:`chain_keys` derives all of them
without reading any output, which is how ``kseg run`` finds stale images.

Which settings each step hashes (a setting a step does not read is left out, so
changing it does not recompute that step):

==================  ==========================================================
``raw_image``       decoding limits and background (constants)
``pixel_features``  ``features``
``elbow_metrics``   ``k_min, k_max, k_override, features, spatial_weight, seed``
``chosen_k``        ``k_min, k_max, k_override, min_strength, fallback,
                    variance_target``
segmentation        ``features, spatial_weight``
==================  ==========================================================
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.features import SCHEMA_VERSION as FEATURES_SCHEMA
from pipeline.images import DEFAULT_MAX_PIXELS
from pipeline.settings import SegmentSettings

from .keys import CHOSEN, CODE_VERSIONS, ELBOW, FEATURES, LABELS, RAW, SEGMENTED, STATS

__all__ = [
    "DECODE_SETTINGS",
    "STEP_INPUTS",
    "cache_key",
    "chain_keys",
    "sha256_bytes",
    "step_key",
    "step_settings",
]

#: How ``raw_image`` decodes files (fixed; part of its cache key).
DECODE_SETTINGS: dict[str, Any] = {
    "max_pixels": DEFAULT_MAX_PIXELS,
    "background": [255, 255, 255],
}

_SWEEP_FIELDS = ("k_min", "k_max", "k_override", "features", "spatial_weight", "seed")
_CHOICE_FIELDS = ("k_min", "k_max", "k_override", "min_strength", "fallback", "variance_target")
_SEGMENT_FIELDS = ("features", "spatial_weight")


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def cache_key(
    asset: str, *, code_version: str, inputs: Sequence[str], settings: Mapping[str, Any]
) -> str:
    """The cache key of one step.

    Parameters
    ----------
    asset : str
        The asset the step produces.
    code_version : str
    inputs : sequence of str
        Cache keys (or the source's SHA-256) of the step's inputs, in a fixed order.
    settings : mapping
        JSON-able settings the step's result depends on.

    Returns
    -------
    str
        64 hex digits.
    """
    document = {
        "asset": asset,
        "code_version": code_version,
        "inputs": list(inputs),
        "settings": dict(settings),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return sha256_bytes(canonical.encode("utf-8"))


def step_settings(asset: str, settings: SegmentSettings) -> dict[str, Any]:
    """The settings that ``asset``'s result depends on (see the module table)."""
    values = settings.to_dict()
    if asset == RAW:
        return dict(DECODE_SETTINGS)
    if asset == FEATURES:
        return {"features": settings.features, "schema_version": FEATURES_SCHEMA}
    if asset == ELBOW:
        return {name: values[name] for name in _SWEEP_FIELDS}
    if asset == CHOSEN:
        return {name: values[name] for name in _CHOICE_FIELDS}
    if asset in (SEGMENTED, LABELS, STATS):
        return {name: values[name] for name in _SEGMENT_FIELDS}
    raise KeyError(f"no cached step produces {asset!r}")


#: The inputs of each step, in the order they are hashed (``source`` = the file's SHA-256).
STEP_INPUTS: dict[str, tuple[str, ...]] = {
    RAW: ("source",),
    FEATURES: (RAW,),
    ELBOW: (FEATURES,),
    CHOSEN: (ELBOW,),
    SEGMENTED: (RAW, ELBOW, CHOSEN),
    LABELS: (RAW, ELBOW, CHOSEN),
    STATS: (RAW, ELBOW, CHOSEN),
}


def step_key(asset: str, upstream: Mapping[str, str], settings: SegmentSettings) -> str:
    """The cache key of ``asset`` given its inputs' keys (``upstream[name]``)."""
    return cache_key(
        asset,
        code_version=CODE_VERSIONS[asset],
        inputs=[upstream[name] for name in STEP_INPUTS[asset]],
        settings=step_settings(asset, settings),
    )


def chain_keys(source_sha256: str, settings: SegmentSettings) -> dict[str, str]:
    """The cache key of every per-image step for a file's content and the settings.

    Parameters
    ----------
    source_sha256 : str
        SHA-256 of the image file's bytes.
    settings : SegmentSettings

    Returns
    -------
    dict of str to str
        Asset name to cache key, for every asset of :data:`STEP_INPUTS`.
    """
    keys = {"source": source_sha256}
    for asset in STEP_INPUTS:
        keys[asset] = step_key(asset, keys, settings)
    del keys["source"]
    return keys
