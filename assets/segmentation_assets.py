"""The segmentation group: the K sweep, the chosen K and the three outputs.

Each function is one cached step of one image (see :class:`~assets.work.ImageWork`):
it computes on a cache miss, then describes the stored output as metadata and
runs its checks on it, hit or miss alike.
"""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.features import image_from_feature_table
from pipeline.plots import elbow_plot_png
from pipeline.render import (
    boundary_overlay,
    decode_png,
    encode_png,
    preview_png,
    segment,
    segment_table,
)
from pipeline.segment import centres_for, choose_for_sweep
from pipeline.sweep import METRIC_COLUMNS, sweep, sweep_to_arrow

from .cache import step_settings
from .checks import check_k_in_range, check_labels, check_wcss_non_increasing
from .keys import CHOSEN, ELBOW, FEATURES, LABELS, SEGMENTED, STATS
from .metadata import frame_table, plain, png_markdown, schema_metadata
from .store import parquet_bytes
from .work import ImageWork, StepOutcome

__all__ = ["SEGMENTATION_STEPS", "chosen_k", "elbow_metrics", "segmentation_output"]

ELBOW_FILE = "elbow_metrics.parquet"
CHOSEN_FILE = "chosen_k.json"
PLOT_FILE = "elbow_plot.png"
SEGMENTED_FILE = "segmented_image.png"
PREVIEW_FILE = "segmented_image_preview.png"
LABELS_FILE = "label_map.png"
STATS_FILE = "segment_stats.parquet"


def _pixels_for_sweep(work: ImageWork) -> np.ndarray:
    # The sweep's input in the lineage is the feature table; its r, g, b columns are the
    # image. When the image is already in memory (decoded in this run) it is used as is.
    work.manifest(FEATURES)
    if "rgb" in work.memo:
        return work.memo["rgb"]
    table = pq.read_table(io.BytesIO(work.read(f"{FEATURES}.parquet")), columns=None)
    return image_from_feature_table(table)


def elbow_metrics(work: ImageWork) -> StepOutcome:
    """Sweep K: WCSS, explained variance and the other indices per K, with the centres."""

    def compute():
        result = sweep(_pixels_for_sweep(work), work.settings)
        work.memo["sweep"] = result
        info = {
            "n_colours": result.n_colours,
            "n_pixels": result.n_pixels,
            "strategy": result.strategy,
            "capped": result.capped,
            "sweep_seconds": float(result.table["seconds"].sum()),
        }
        return {ELBOW_FILE: parquet_bytes(sweep_to_arrow(result))}, info

    outcome = work.run(ELBOW, compute)

    def describe():
        result = work.sweep()
        info = outcome.manifest.info
        metadata = {
            "dagster/row_count": len(result.table),
            **schema_metadata(ELBOW, pa.Schema.from_pandas(result.table, preserve_index=False)),
            "wcss_curve": frame_table(result.table, columns=list(METRIC_COLUMNS)),
            "unique_colours": info["n_colours"],
            "sweep_strategy": info["strategy"],
            "sweep_seconds": round(info["sweep_seconds"], 4),
        }
        return metadata, [check_wcss_non_increasing(result.k_values, result.wcss)]

    work.describe(outcome, ELBOW_FILE, describe)
    return outcome


def chosen_k(work: ImageWork) -> StepOutcome:
    """Choose K at the elbow of the WCSS curve (or by the fallback, or the override)."""

    def compute():
        result = work.sweep()
        choice = choose_for_sweep(result, work.settings)
        work.memo["choice"] = choice
        row = result.table.loc[result.table["k_effective"] == choice.k].iloc[0]
        document = {
            "chosen_k": choice.k,
            "knee_strength": choice.strength,
            "reason": choice.reason,
            "rule": choice.rule,
            "method": choice.method,
            "detail": choice.detail,
            "elbow_k": choice.elbow_k,
            "capped": choice.capped,
            "wcss_at_k": float(row["wcss"]),
            "explained_variance_at_k": plain(float(row["explained_variance"])),
            "settings": step_settings(CHOSEN, work.settings),
            "choice": choice.to_dict(),
        }
        files = {
            CHOSEN_FILE: json.dumps(document, indent=1, allow_nan=False).encode("utf-8"),
            PLOT_FILE: elbow_plot_png(result.table, choice),
        }
        info = {key: document[key] for key in ("chosen_k", "knee_strength", "reason", "rule")}
        info["wcss_at_k"] = document["wcss_at_k"]
        return files, info

    outcome = work.run(CHOSEN, compute)
    work.describe(outcome, CHOSEN_FILE, lambda: _describe_choice(work))
    return outcome


def _describe_choice(work: ImageWork):
    choice = work.choice()
    document = json.loads(work.read(CHOSEN_FILE))
    checks = [check_k_in_range(choice.k, work.settings, capped=choice.capped)]
    metadata = {
        "chosen_k": int(choice.k),
        "knee_strength": float(choice.strength),
        "reason": choice.reason,
        "rule": choice.rule,
        "method": choice.method,
        "detail": choice.detail,
        "wcss_at_k": float(document["wcss_at_k"]),
        "elbow_plot": png_markdown(
            work.read(PLOT_FILE), alt="elbow plot", caption=f"WCSS versus K; {choice.detail}."
        ),
    }
    return metadata, checks


def _segmentation(work: ImageWork):
    def load():
        choice = work.choice()
        centres = centres_for(work.sweep(), choice.k)
        return segment(work.rgb(), centres, work.settings)

    return work.lazy("segmentation", load)


def _segmented_files(work: ImageWork):
    seg = _segmentation(work)
    rgb = work.rgb()
    preview = preview_png(rgb, seg.segmented, boundary_overlay(rgb, seg.labels), height=96)
    files = {SEGMENTED_FILE: encode_png(seg.segmented), PREVIEW_FILE: preview}
    return files, {"k": seg.k, "wcss": seg.wcss}


def _label_files(work: ImageWork):
    seg = _segmentation(work)
    return {LABELS_FILE: encode_png(seg.labels)}, {"k": seg.k, "dtype": str(seg.labels.dtype)}


def _stats_files(work: ImageWork):
    seg = _segmentation(work)
    frame = segment_table(work.rgb(), seg.labels)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return {STATS_FILE: parquet_bytes(table)}, {"k": seg.k, "rows": len(frame)}


def _describe_segmented(work: ImageWork, outcome: StepOutcome):
    info = outcome.manifest.info
    metadata = {
        "k": int(info["k"]),
        "wcss": float(info["wcss"]),
        "preview": png_markdown(
            work.read(PREVIEW_FILE),
            alt="original | segmented | boundaries",
            caption="original | segmented | boundaries",
        ),
    }
    return metadata, []


def _describe_labels(work: ImageWork, outcome: StepOutcome):
    height, width = work.image_size()
    labels = work.lazy("labels_stored", lambda: decode_png(work.read(LABELS_FILE)))
    metadata = {
        "k": int(outcome.manifest.info["k"]),
        "dtype": outcome.manifest.info["dtype"],
        "height": height,
        "width": width,
    }
    return metadata, [check_labels(labels, height, width, work.choice().k)]


def _describe_stats(work: ImageWork, outcome: StepOutcome):
    table = pq.read_table(io.BytesIO(work.read(STATS_FILE)))
    metadata = {
        "dagster/row_count": table.num_rows,
        **schema_metadata(STATS, table.schema),
        "segments": frame_table(
            table.to_pandas(),
            columns=["label", "pixel_count", "share", "mean_r", "mean_g", "mean_b", "n_components"],
        ),
    }
    return metadata, []


_OUTPUTS = {
    SEGMENTED: (_segmented_files, _describe_segmented),
    LABELS: (_label_files, _describe_labels),
    STATS: (_stats_files, _describe_stats),
}


def segmentation_output(work: ImageWork, asset: str) -> StepOutcome:
    """One of ``segmented_image``, ``label_map``, ``segment_stats`` (segmenting once per run)."""
    make_files, describe = _OUTPUTS[asset]
    outcome = work.run(asset, lambda: make_files(work))
    main_file = {SEGMENTED: SEGMENTED_FILE, LABELS: LABELS_FILE, STATS: STATS_FILE}[asset]
    work.describe(outcome, main_file, lambda: describe(work, outcome))
    return outcome


#: The segmentation group's steps in order, as (asset, step function).
SEGMENTATION_STEPS = (
    (ELBOW, elbow_metrics),
    (CHOSEN, chosen_k),
    (SEGMENTED, lambda work: segmentation_output(work, SEGMENTED)),
    (LABELS, lambda work: segmentation_output(work, LABELS)),
    (STATS, lambda work: segmentation_output(work, STATS)),
)
