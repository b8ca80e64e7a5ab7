"""Engine benchmark: kseg against the classic K-means method, side by side in one run.

    python benchmarks/bench_engine.py            # photos + 12-MP mosaic, full reference sweeps
    python benchmarks/bench_engine.py --quick    # skip the reference's naive sweep on the mosaic

For every image it prints, each measured in its own process:
  fit5   ours (K=5 fit + segmentation) / reference (one KMeans(K=5, n_init=5) fit)
  sweep  ours (sweep K=1..12 + choice + segmentation) / reference K=5 fit, and / naive sweep
  wcss   ours / reference WCSS at every K (max and the list), same RGB features and units
  mem    peak RSS ours / reference (K=5 fit)
  cmd    whole command `kseg segment IMAGE` / whole reference script (decode, fit, PNG)
Targets on the 12-MP mosaic: sweep/fit5 <= 0.10, wcss <= 1.001 at every K,
cmd <= 0.25, mem <= 0.5.

Our in-process timings are the median of three runs, each in a fresh process: a
run of about a second varies by 10-20% here, mostly with how fast the VM's host
supplies fresh memory pages (measured: up to 2.5 ms per MB first touched). The
reference runs once; its fit and sweep take 30-400 s, where that noise is small.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import PHOTOS, bundled_photo, make_mosaic, run_child  # noqa: E402


def _timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def _median_run(args: list[str], runs: int = 3) -> dict:
    """The run with the median ``seconds`` of ``runs`` fresh-process runs of a script."""
    results = sorted((run_child(args) for _ in range(runs)), key=lambda r: r["seconds"])
    return results[len(results) // 2] | {"all_seconds": [r["seconds"] for r in results]}


def bench_image(path: Path, *, naive_sweep: bool, tmp: Path) -> dict:
    ref5 = run_child([str(HERE / "reference.py"), str(path), "--fit", "--k", "5"])
    ours5 = _median_run([str(HERE / "ours.py"), str(path), "--k", "5"])
    ours = _median_run([str(HERE / "ours.py"), str(path)])
    row = {
        "image": path.name,
        "ref_fit5_s": ref5["seconds"],
        "ours_fit5_s": ours5["seconds"],
        "ours_sweep_s": ours["seconds"],
        "ours_sweep_runs_s": [round(x, 3) for x in ours["all_seconds"]],
        "fit5_ratio": ours5["seconds"] / ref5["seconds"],
        "sweep_vs_fit5": ours["seconds"] / ref5["seconds"],
        "wcss5_ratio": ours5["wcss"][-1] / ref5["wcss"],
        "ref_peak_mb": ref5["peak_mb"],
        "ours_peak_mb": ours["peak_mb"],
        "mem_ratio": ours["peak_mb"] / ref5["peak_mb"],
        "k_chosen": ours["k"],
    }
    if naive_sweep:
        ref = run_child([str(HERE / "reference.py"), str(path), "--sweep"])
        ratios = [o / r if r > 0 else 1.0 for o, r in zip(ours["wcss"], ref["wcss"], strict=True)]
        row.update(
            ref_sweep_s=sum(ref["seconds"]),
            sweep_vs_naive=ours["seconds"] / sum(ref["seconds"]),
            wcss_ratios=[round(r, 5) for r in ratios],
            wcss_ratio_max=max(ratios),
        )
    out = tmp / "out"
    ref_cmd = _timed([sys.executable, str(HERE / "reference.py"), str(path), str(tmp / "ref.png")])
    kseg = [sys.executable, "-m", "assets.cli", "segment", str(path), "--out", str(out), "--quiet"]
    ours_cmd = _timed(kseg)
    ours_cmd_rgb = _timed([*kseg, "--features", "rgb"])
    shutil.rmtree(out, ignore_errors=True)
    row.update(
        ref_cmd_s=ref_cmd,
        ours_cmd_s=ours_cmd,
        cmd_ratio=ours_cmd / ref_cmd,
        cmd_ratio_rgb=ours_cmd_rgb / ref_cmd,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="no naive reference sweep on the mosaic")
    p.add_argument("--mosaic-only", action="store_true")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    a = p.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = []
        if not a.mosaic_only:
            for name in PHOTOS:
                path = tmp / f"{name}.png"
                Image.fromarray(bundled_photo(name)).save(path)
                images.append((path, True))
        images.append((make_mosaic(tmp / "mosaic-12mp.jpg"), not a.quick))
        rows = []
        for path, naive in images:
            row = bench_image(path, naive_sweep=naive, tmp=tmp)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(
        f"{'image':<18}{'fit5':>7}{'sweep/fit5':>11}{'sweep/naive':>12}{'wcss max':>10}"
        f"{'mem':>6}{'cmd':>6}{'cmd rgb':>8}{'ref5 s':>8}{'ours s':>8}"
    )
    for r in rows:
        naive = f"{r['sweep_vs_naive']:.4f}" if "sweep_vs_naive" in r else "-"
        wmax = f"{r['wcss_ratio_max']:.5f}" if "wcss_ratio_max" in r else f"{r['wcss5_ratio']:.5f}*"
        print(
            f"{r['image']:<18}{r['fit5_ratio']:>7.3f}{r['sweep_vs_fit5']:>11.3f}{naive:>12}"
            f"{wmax:>10}{r['mem_ratio']:>6.2f}{r['cmd_ratio']:>6.2f}{r['cmd_ratio_rgb']:>8.2f}"
            f"{r['ref_fit5_s']:>8.2f}{r['ours_sweep_s']:>8.2f}"
        )
    print("(* = WCSS ratio at K=5 only; the naive sweep was skipped)")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
