"""Shared helpers of the quality benchmarks: BSDS500 folders and the region metrics.

The metrics are those of ``score.py`` (given by path, never copied): its
``load_gt``, ``rand_index`` and ``variation_of_information`` are imported from the
file, and Segmentation Covering is computed as its ``covering`` does, from the
contingency table. Contingency tables are built once per image against the finest
regions and summed over the regions that merge, so scoring every stopping point of a
merge curve costs no pass over the pixels.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np


def load_score(bsds_dir: Path) -> ModuleType:
    """Import ``score.py`` from the data folder (it sits beside ``groundTruth/``)."""
    path = Path(bsds_dir) / "score.py"
    if not path.is_file():
        raise SystemExit(f"{path} not found: BSDS_DIR must hold score.py, images/, groundTruth/")
    spec = importlib.util.spec_from_file_location("bsds_score", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def image_ids(bsds_dir: Path, split: str) -> list[str]:
    """The image ids of a split, sorted."""
    return sorted(p.stem for p in (Path(bsds_dir) / "groundTruth" / split).glob("*.mat"))


@dataclass
class Scores:
    """Per-image PRI and VI and the Covering sums, aggregated as the benchmark does."""

    pri: list[float]
    vi: list[float]
    got: float = 0.0
    size: float = 0.0

    @classmethod
    def empty(cls) -> Scores:
        return cls([], [])

    def add(self, pri: float, vi: float, got: float, size: float) -> None:
        self.pri.append(pri)
        self.vi.append(vi)
        self.got += got
        self.size += size

    @property
    def covering(self) -> float:
        return self.got / self.size if self.size else float("nan")

    def summary(self) -> tuple[float, float, float]:
        return float(np.mean(self.pri)), float(np.mean(self.vi)), self.covering


def contingencies(labels: np.ndarray, gts: list[np.ndarray]) -> list[np.ndarray]:
    """Contingency tables (labels x ground-truth regions) of ``labels`` 0..n-1."""
    n = int(labels.max()) + 1
    out = []
    for g in gts:
        _, inverse = np.unique(g.ravel(), return_inverse=True)
        cols = int(inverse.max()) + 1
        counts = np.bincount(labels.ravel().astype(np.int64) * cols + inverse, minlength=n * cols)
        out.append(counts.reshape(n, cols).astype(np.float64))
    return out


def score_tables(score: ModuleType, tables: list[np.ndarray]) -> tuple[float, float, float, float]:
    """(PRI, VI, covering numerator, covering denominator) of one image's tables."""
    pri = float(np.mean([score.rand_index(n) for n in tables]))
    vi = float(np.mean([score.variation_of_information(n) for n in tables]))
    got = size = 0.0
    for n in tables:
        n = n[n.sum(1) > 0]
        seg_sizes, gt_sizes = n.sum(1)[:, None], n.sum(0)[None, :]
        overlap = n / (seg_sizes + gt_sizes - n)
        got += float((overlap.max(0) * gt_sizes[0]).sum())
        size += float(gt_sizes.sum())
    return pri, vi, got, size


def merged_tables(tables: list[np.ndarray], groups: np.ndarray, n: int) -> list[np.ndarray]:
    """Contingency tables after merging rows: row ``i`` goes to ``groups[i]`` of ``n``."""
    out = []
    for t in tables:
        merged = np.zeros((n, t.shape[1]))
        np.add.at(merged, groups, t)
        out.append(merged)
    return out
