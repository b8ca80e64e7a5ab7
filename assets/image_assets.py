"""The image group: the observed source file, the decoded image, the pixel features.

``source_image`` is an observable source asset: observing a partition hashes its
image file, and the SHA-256 of the bytes is the partition's data version (one
observation event per partition, so a batch reports each image's own version). The two
computed steps (``raw_image``, ``pixel_features``) are functions of an
:class:`~assets.work.ImageWork`, driven by :mod:`assets.steps`.
"""

import warnings
from pathlib import Path

import dagster as dg

from pipeline.colours import colour_histogram
from pipeline.errors import ImageError
from pipeline.features import feature_table
from pipeline.images import decode_image
from pipeline.render import encode_png

from .cache import DECODE_SETTINGS, sha256_bytes
from .checks import feature_rows_from_parquet
from .incoming import resolve_source
from .keys import FEATURES, GROUP_IMAGES, RAW, SOURCE
from .metadata import schema_metadata
from .partitions import IMAGES
from .provenance import observation
from .storage import KsegStorage
from .store import parquet_bytes
from .work import ImageWork, StepOutcome

__all__ = ["pixel_features", "raw_image", "read_source", "source_image"]

RAW_FILE = "raw_image.png"
FEATURES_FILE = "pixel_features.parquet"


def _observe(context: dg.AssetExecutionContext, storage: KsegStorage):
    found = storage.scan().by_key()
    for key in context.partition_keys:
        image = found.get(key)
        if image is None:
            context.log.warning(f"partition {key}: no such image in {storage.incoming()}")
            continue
        try:
            data = image.path.read_bytes()
        except OSError as exc:  # one unreadable file must not fail the other observations
            reason = exc.strerror or exc
            context.log.warning(f"partition {key}: cannot read {image.path} ({reason})")
            continue
        yield observation(
            asset_key=dg.AssetKey(SOURCE),
            partition=key,
            data_version=sha256_bytes(data),
            metadata={"path": image.relpath, "bytes": len(data)},
        )


with warnings.catch_warnings():
    # multi_observable_source_asset is beta in Dagster 1.13 (pinned). Unlike
    # @observable_source_asset (a SourceAsset, whose conversion raises Dagster's own
    # DeprecationWarning on load), it yields an AssetsDefinition with a full AssetSpec.
    warnings.simplefilter("ignore", dg.BetaWarning)

    @dg.multi_observable_source_asset(
        name="observe_source_image",
        specs=[
            dg.AssetSpec(
                SOURCE,
                description="An image file in the incoming folder, one partition per file; "
                "its data version is the SHA-256 of its bytes, so a replaced file shows "
                "what was made from it as unsynced.",
                group_name=GROUP_IMAGES,
                kinds={"file"},
                partitions_def=IMAGES,
                skippable=True,
            )
        ],
        partitions_def=IMAGES,
    )
    def source_image(context: dg.AssetExecutionContext, storage: KsegStorage):
        """Observe the selected image files: one observation per partition, SHA-256 as version."""
        yield from _observe(context, storage)


def read_source(work: ImageWork, root: Path) -> None:
    """Read the image file's bytes and hash them (the start of the cache-key chain).

    Parameters
    ----------
    work : ImageWork
    root : pathlib.Path
        The incoming folder; the file must still resolve inside it when it is read.

    Raises
    ------
    pipeline.errors.ImageError
        If there is no file for the partition, it now leads outside the incoming
        folder, or it cannot be read.
    """
    if work.source is None:
        raise ImageError(work.partition, "no image in the incoming folder has this partition key")
    name = str(work.source.path)
    try:
        data = resolve_source(root, work.source.relpath).read_bytes()
    except ValueError as exc:
        raise ImageError(name, str(exc)) from exc
    except OSError as exc:
        raise ImageError(name, f"cannot read file ({exc.strerror or exc})") from exc
    work.source_bytes = data
    work.source_sha256 = sha256_bytes(data)


def raw_image(work: ImageWork) -> StepOutcome:
    """Decode the file into normalised (H, W, 3) uint8 RGB, stored as a lossless PNG."""
    source = work.source
    assert source is not None and work.source_bytes is not None

    def compute():
        loaded = decode_image(
            work.source_bytes,
            name=str(source.path),
            max_pixels=DECODE_SETTINGS["max_pixels"],
            background=tuple(DECODE_SETTINGS["background"]),
        )
        work.memo["rgb"] = loaded.rgb
        info = loaded.metadata()
        info["source_file"] = info.pop("path")
        info.update(
            source_path=source.relpath,
            source_sha256=work.source_sha256,
            source_bytes=len(work.source_bytes),
            unique_colours=colour_histogram(loaded.rgb).n_colours,
        )
        return {RAW_FILE: encode_png(loaded.rgb)}, info

    outcome = work.run(RAW, compute)
    info = outcome.manifest.info
    work.describe(outcome, RAW_FILE, lambda: (_raw_metadata(info), []))
    return outcome


def _raw_metadata(info: dict) -> dict:
    return {
        "source_path": info["source_path"],
        "source_file": dg.MetadataValue.path(info["source_file"]),
        "source_sha256": info["source_sha256"],
        "source_bytes": info["source_bytes"],
        "format": info["format"],
        "mode": info["mode"],
        "width": info["width"],
        "height": info["height"],
        "orientation": info["orientation"],
        "bit_depth": info["bit_depth"],
        "n_frames": info["n_frames"],
        "unique_colours": info["unique_colours"],
        "notes": "; ".join(info["notes"]) or "none",
    }


def pixel_features(work: ImageWork) -> StepOutcome:
    """Build the per-pixel feature table (position, RGB, colour space) as Parquet."""
    import pyarrow.parquet as pq

    features = work.settings.features

    def compute():
        table = feature_table(work.rgb(), features=features)
        info = {"rows": table.num_rows, "columns": table.num_columns, "features": features}
        return {FEATURES_FILE: parquet_bytes(table)}, info

    outcome = work.run(FEATURES, compute)

    def describe():
        height, width = work.image_size()
        with work.store.open(work.partition, FEATURES_FILE) as stream:
            schema = pq.read_schema(stream)
            check = feature_rows_from_parquet(stream, height, width)
        metadata = {
            "dagster/row_count": outcome.manifest.info["rows"],
            **schema_metadata(FEATURES, schema),
            "colour_space": outcome.manifest.info["features"],
        }
        return metadata, [check]

    work.describe(outcome, FEATURES_FILE, describe)
    return outcome
