"""``chosen_k``: K at the elbow of the WCSS curve (or the fallback, or the override)."""

import json
from typing import Any

from pipeline.elbow import ElbowChoice
from pipeline.plots import candidates, elbow_plot_png
from pipeline.segment import choose_for_sweep

from ..checks import check_k_in_range
from ..metadata import plain, png_markdown, rounded
from ..names import CHOSEN, ELBOW, GROUP_SEGMENTATION
from .base import CheckDef, Computed, Inputs, Step, Stored
from .elbow_metrics import swept

__all__ = ["CHOSEN_FILE", "PLOT_FILE", "STEP", "choice"]

CHOSEN_FILE = "chosen_k.json"
PLOT_FILE = "elbow_plot.png"
_SETTINGS = ("k_min", "k_max", "k_override", "min_strength", "fallback", "variance_target")
_INDEX_NAMES = {
    "silhouette": "silhouette",
    "calinski_harabasz": "Calinski-Harabasz",
    "davies_bouldin": "Davies-Bouldin",
}


def _compute(inputs: Inputs) -> Computed:
    result = swept(inputs)
    made = choose_for_sweep(result, inputs.settings)
    row = result.table.loc[result.table["k_effective"] == made.k].iloc[0]
    values = inputs.settings.to_dict()
    document = {
        "candidates": candidates(result.table),
        "chosen_k": made.k,
        "knee_strength": made.strength,
        "reason": made.reason,
        "rule": made.rule,
        "method": made.method,
        "detail": made.detail,
        "elbow_k": made.elbow_k,
        "capped": made.capped,
        "wcss_at_k": float(row["wcss"]),
        "explained_variance_at_k": plain(float(row["explained_variance"])),
        "settings": {name: values[name] for name in _SETTINGS},
        "choice": made.to_dict(),
    }
    files = {
        CHOSEN_FILE: json.dumps(document, indent=1, allow_nan=False).encode("utf-8"),
        PLOT_FILE: elbow_plot_png(result.table, made),
    }
    info = {key: document[key] for key in ("chosen_k", "knee_strength", "reason", "rule")}
    info["wcss_at_k"] = document["wcss_at_k"]
    return Computed(files, info, value=made)


def _from_file(data: bytes) -> ElbowChoice:
    return ElbowChoice.from_dict(json.loads(data)["choice"])


def _describe(stored: Stored) -> tuple[dict[str, Any], list]:
    made = stored.value(lambda _: _from_file(stored.read(CHOSEN_FILE)))
    check = check_k_in_range(made.k, stored.inputs.settings, capped=made.capped)
    document = json.loads(stored.read(CHOSEN_FILE))
    picks = document.get("candidates", {})
    shown = ", ".join(f"{_INDEX_NAMES[name]} K={k}" for name, k in picks.items())
    metadata = {
        "chosen_k": int(made.k),
        "knee_strength": rounded(made.strength, 3),
        "reason": made.reason,
        "rule": made.rule,
        "method": made.method,
        "detail": made.detail,
        "wcss_at_k": rounded(stored.info["wcss_at_k"]),
        "other_indices": shown or "none",
        "elbow_plot": png_markdown(
            stored.read(PLOT_FILE),
            alt="the K sweep",
            caption=f"Left: WCSS versus K on log axes; {made.detail}. Right: the other "
            f"indices and the K each would pick ({shown}). To see those K, open the "
            "segmented_image of this image (K-1, K, K+1).",
        ),
    }
    return metadata, [check]


def choice(inputs: Inputs) -> ElbowChoice:
    """The chosen K: from memory, or ``chosen_k.json``."""
    return inputs.value(CHOSEN, lambda _: _from_file(inputs.read(CHOSEN, CHOSEN_FILE)))


STEP = Step(
    asset=CHOSEN,
    description="The number of segments K, chosen at the elbow of the WCSS curve (or by the "
    "fallback rule or the image's fixed K), with knee strength and reason (JSON); its "
    "metadata shows the elbow plot.",
    group=GROUP_SEGMENTATION,
    kinds=frozenset({"python", "json"}),
    code_version="3",  # 3: the plot shows the other indices; candidates in the JSON
    reads=(ELBOW,),
    settings=_SETTINGS,
    main_file=CHOSEN_FILE,
    compute=_compute,
    describe=_describe,
    checks=(
        CheckDef(
            "k_in_range", "The chosen K lies in the configured range (or equals the fixed K)."
        ),
    ),
)
