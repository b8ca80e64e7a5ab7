"""kseg against the tools a user would pick instead, side by side in one run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_peers.py --make-env /var/tmp/kseg-peers   # once
    .venv/bin/python benchmarks/bench_peers.py --peers-python /var/tmp/kseg-peers/bin/python \\
        [--timeout 600] [--no-mosaic]

The peers (faiss, OpenCV, yellowbrick, scikit-learn's MiniBatchKMeans and classic
``KMeans``) live in their own virtual environment, never in kseg's dependencies:
``--make-env DIR`` creates it from PyPI (the scikit-learn lines run in kseg's own
environment). Each tool runs as its user would run it, in
its own process (``benchmarks/peer_sweep.py``): decode with Pillow, cluster every
pixel's RGB for K = 1..12, write the segmented image. kseg runs as ``kseg segment
--features rgb`` (every output written). For every tool the script prints the whole
process's wall time and peak memory (GNU time), the clustering time alone
(``compute``), and its WCSS at each K evaluated exactly on all pixels from the tool's
centres, as a ratio to the best any tool reached at that K (worst K shown).

Workloads: two bundled 0.25-megapixel photos (coffee, astronaut), and the 12-megapixel
mosaic of ``bench_engine.py``, where the classic scikit-learn line is one K=5 fit (its
sweep would take an hour) plus the whole classic script (``reference.py``). A tool that
exceeds ``--timeout`` seconds is reported as killed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import bundled_photo, make_mosaic  # noqa: E402

KSEG = Path(sys.executable).with_name("kseg")
# yellowbrick 1.5 (its latest) recognises a clusterer by an attribute scikit-learn
# dropped in 1.6, so its environment keeps an older scikit-learn; the scikit-learn
# lines themselves run in kseg's environment, with the scikit-learn kseg uses.
PEER_PACKAGES = (
    "numpy",
    "pillow",
    "scikit-learn<1.6",
    "matplotlib",
    "faiss-cpu",
    "opencv-python-headless",
    "yellowbrick",
)
IN_KSEG_ENV = {"minibatch", "sklearn", "sklearn-k"}
PHOTO_TOOLS = ("faiss", "opencv", "yellowbrick", "minibatch", "sklearn")
MOSAIC_TOOLS = ("faiss", "opencv", "yellowbrick", "minibatch", "sklearn-k")
LABELS = {
    "faiss": "faiss `Kmeans` sweep",
    "opencv": "OpenCV `cv2.kmeans` sweep",
    "yellowbrick": "yellowbrick `KElbowVisualizer(KMeans())`",
    "minibatch": "scikit-learn MiniBatchKMeans sweep",
    "sklearn": "scikit-learn KMeans, classic sweep",
    "sklearn-k": "scikit-learn KMeans, classic, one K=5 fit",
    "reference": "classic script (`reference.py`: decode, K=5 fit, PNG)",
}


def make_env(folder: Path) -> Path:
    """A virtual environment with the peers, from PyPI; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True, timeout=1800
    )
    return python


def timed(args: list[str], timeout: float) -> dict:
    """Run a whole process under GNU time: wall seconds, peak MB, its JSON line (if any)."""
    started = time.perf_counter()
    # Its own process group: on a timeout the tool itself is killed, not only GNU time
    # (an orphaned sweep would load the machine for every later measurement).
    with subprocess.Popen(
        ["/usr/bin/time", "-f", "%M", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"killed": timeout}
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"error": stderr.strip().splitlines()[-3:]}
    text = stdout.strip()
    if text.startswith("["):  # kseg segment --json: one indented array
        document = json.loads(text)
    else:  # the peers and reference.py: one JSON line last
        lines = [line for line in text.splitlines() if line.startswith("{")]
        document = json.loads(lines[-1]) if lines else None
    return {
        "wall": wall,
        "peak_mb": int(stderr.strip().splitlines()[-1]) / 1024,
        "json": document,
    }


def exact_wcss(rgb: np.ndarray, centres: np.ndarray) -> float:
    """WCSS of every pixel to its nearest centre (RGB, float64), over distinct colours."""
    from pipeline.colours import colour_histogram

    hist = colour_histogram(rgb)
    colours = hist.colours.astype(np.float64)
    table = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    best = np.full(len(colours), np.inf)
    for centre in table:
        np.minimum(best, ((colours - centre) ** 2).sum(axis=1), out=best)
    return float(hist.counts @ best)


def run_kseg(image: Path, out: Path, timeout: float) -> dict:
    found = timed(
        [str(KSEG), "segment", str(image), "--features", "rgb", "--out", str(out), "--json"],
        timeout,
    )
    if "wall" in found:
        summary = found["json"][0]
        stages = summary["stage_seconds"]
        found["compute"] = stages["sweep"] + stages["choice"] + stages["segment"]
        found["wcss"] = dict(zip(summary["k_values"], summary["wcss"], strict=True))
    return found


def run_peer(python: Path, tool: str, image: Path, out: Path, timeout: float) -> dict:
    script = str(HERE / "peer_sweep.py")
    found = timed([str(python), script, tool, str(image), "--out", str(out)], timeout)
    if "wall" in found:
        rgb = np.asarray(Image.open(image).convert("RGB"))
        result = found["json"]
        found["compute"] = result["compute"]
        if result["scores"]:  # yellowbrick's own scores: WCSS of its fits on all pixels
            found["wcss"] = {int(k): v for k, v in result["scores"].items()}
        else:
            found["wcss"] = {
                int(k): exact_wcss(rgb, np.asarray(c)) for k, c in result["centres"].items()
            }
    return found


def _cell(found: dict, best: dict[int, float]) -> str:
    if "killed" in found:
        return f"| killed after {found['killed']:.0f} s | - | - | - |"
    if "error" in found:
        return f"| failed: {' '.join(found['error'])[:80]} | - | - | - |"
    ratios = {k: v / best[k] for k, v in found.get("wcss", {}).items() if best.get(k)}
    worst = max(ratios, key=ratios.get) if ratios else None
    wcss = f"{ratios[worst]:.4f} (K={worst})" if worst is not None else "-"
    compute = f"{found['compute']:.2f} s" if "compute" in found else "-"
    return f"| {found['wall']:.2f} s | {compute} | {found['peak_mb']:.0f} MB | {wcss} |"


def table(name: str, results: dict[str, dict]) -> list[str]:
    best: dict[int, float] = {}
    for found in results.values():
        for k, v in found.get("wcss", {}).items():
            best[k] = min(best.get(k, np.inf), v)
    lines = [
        f"### {name}",
        "",
        "| tool | whole process | compute | peak memory | WCSS vs best, worst K |",
        "|---|---|---|---|---|",
    ]
    for tool, found in results.items():
        label = "kseg `segment --features rgb`" if tool == "kseg" else LABELS[tool]
        lines.append(f"| {label} " + _cell(found, best))
    return lines


def figures(name: str, results: dict[str, dict], mosaic: bool) -> list[str]:
    """The issue's targets for this workload, measured in this run."""
    ours = results["kseg"]
    if "wall" not in ours:
        return ["kseg failed"]
    lines = []
    if mosaic:
        one_fit, script = results.get("sklearn-k", {}), results.get("reference", {})
        if "compute" in one_fit:
            lines.append(
                f"- compute {ours['compute']:.2f} s = {ours['compute'] / one_fit['compute']:.3f}x "
                "of one classic K=5 fit (target <= 0.10x)"
            )
        if "wall" in script:
            lines.append(
                f"- whole command {ours['wall']:.2f} s = {ours['wall'] / script['wall']:.3f}x of "
                "the classic script (target <= 0.25x)"
            )
    else:
        lines.append(f"- compute {ours['compute']:.2f} s (target <= 0.4 s)")
        lines.append(f"- whole command {ours['wall']:.2f} s (target <= 1.5 s)")
        faiss = results.get("faiss", {})
        if "wall" in faiss:
            lines.append(
                f"- {ours['wall'] / faiss['wall']:.1f}x faiss's whole process (target <= 5x)"
            )
    classic = results.get("sklearn", {}).get("wcss", {})
    if classic:
        worst = max(ours["wcss"][k] / classic[k] for k in classic if classic[k] > 0)
        lines.append(f"- WCSS at most {worst:.4f}x the classic sweep's at every K (target 1.001)")
    return [f"{name}:", *lines]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--make-env", type=Path, help="create the peers' environment here")
    parser.add_argument("--peers-python", type=Path, help="python of the peers' environment")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per tool and image")
    parser.add_argument("--no-mosaic", action="store_true", help="the photos only")
    parser.add_argument("--tools", nargs="*", help="only these peers (kseg always runs)")
    args = parser.parse_args(argv)
    if args.make_env:
        python = make_env(args.make_env)
        print(f"peers installed: {python}")
        if not args.peers_python:
            return 0
    if not args.peers_python:
        parser.error("--peers-python is required (create one with --make-env DIR)")
    python = args.peers_python
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kseg-peers-") as tmp:
        tmp_path = Path(tmp)
        workloads = []
        for name in ("coffee", "astronaut"):
            path = tmp_path / f"{name}.png"
            Image.fromarray(bundled_photo(name)).save(path)
            workloads.append((name, path, PHOTO_TOOLS, False))
        if not args.no_mosaic:
            path = make_mosaic(tmp_path / "mosaic-12mp.jpg")
            workloads.append(("12-MP mosaic", path, MOSAIC_TOOLS, True))
        for name, path, tools, mosaic in workloads:
            print(f"{name}: kseg ...", flush=True)
            results = {"kseg": run_kseg(path, tmp_path / "kseg-out", args.timeout)}
            for tool in tools:
                if args.tools and tool not in args.tools:
                    continue
                print(f"{name}: {tool} ...", flush=True)
                target = tmp_path / f"{tool}.png"
                runner = Path(sys.executable) if tool in IN_KSEG_ENV else python
                results[tool] = run_peer(runner, tool, path, target, args.timeout)
            if mosaic and (not args.tools or "reference" in args.tools):
                script = [sys.executable, str(HERE / "reference.py"), str(path)]
                results["reference"] = timed([*script, str(tmp_path / "ref.png")], args.timeout)
            block = [*table(name, results), "", *figures(name, results, mosaic), ""]
            print("\n".join(block), flush=True)
            out += block
    print("\n".join(["", "all workloads:", "", *out]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
