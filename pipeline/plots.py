"""Small PNG plots for reports and the Dagster UI (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from .elbow import ElbowChoice

__all__ = ["elbow_plot_png"]


def elbow_plot_png(
    table: pd.DataFrame,
    choice: ElbowChoice,
    *,
    width: float = 4.2,
    height: float = 2.6,
    dpi: int = 80,
) -> bytes:
    """The WCSS-versus-K curve with the chosen K marked, as PNG bytes.

    Parameters
    ----------
    table : pandas.DataFrame
        A sweep table with ``k``, ``wcss`` and ``explained_variance`` columns.
    choice : ElbowChoice
    width, height : float
        Figure size in inches; at the default ``dpi`` the PNG is about 340x210
        pixels and a few KB, small enough to embed in Dagster metadata.

    Returns
    -------
    bytes
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    ks = table["k"].to_numpy()
    wcss = table["wcss"].to_numpy()
    ax.plot(ks, wcss, "o-", color="#3b6ea8", markersize=3.5, linewidth=1.4)
    chosen = table.loc[table["k"] == choice.k]
    if not chosen.empty:
        ax.plot(
            choice.k,
            chosen["wcss"].iloc[0],
            "o",
            markersize=9,
            markerfacecolor="none",
            markeredgecolor="#d1495b",
            markeredgewidth=2,
        )
    label = {"elbow": "elbow", "no_clear_elbow": "no clear elbow", "override": "fixed"}
    ax.set_title(
        f"K = {choice.k} ({label.get(choice.reason, choice.reason)}, "
        f"strength {choice.strength:.2f})",
        fontsize=9,
    )
    ax.set_xlabel("K", fontsize=8)
    ax.set_ylabel("WCSS", fontsize=8)
    ax.set_xticks(ks)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
