"""The Dagster UI in a real browser, the way the pipeline's users work with it.

A real ``dagster dev`` (:class:`~tests.e2e.server.DagsterDev`) runs on a free port
with its own instance, incoming folder and store. Two sample photos are
materialised beforehand with ``kseg run`` (the project's own command, pointed at the
server's folders); a third is dropped into the incoming folder and registered as a
partition. Debian's Chromium, driven by Playwright (never a downloaded browser),
then:

1. opens the global lineage page and checks that every asset is drawn and that the
   drawn edges are exactly the dependencies, in pipeline order;
2. launches the third image's partition from the ``segment_images`` job page (the
   "Materialize all" button, the partition picker, "Launch 1 run") and waits,
   bounded, for that run to succeed;
3. opens that partition's events: the segmented preview (three 300-px panels), the
   neighbouring-K strip with its instructions and the 900x360 sweep plot load as
   images at their sizes; chosen K, knee strength and row counts show the values the
   run recorded;
4. rebuilds the report and sees its plot across images (900x280) and its table with
   every image;
5. opens every asset's checks tab and sees its checks passed;
6. saves a screenshot of each step in ``$KSEG_SCREENSHOT_DIR`` (default
   ``ci-artifacts/screenshots``) as ``ui-NN-<step>.png``, with ``ui-NN-failure.png``
   (and the server log's tail in the output) when a step fails.

Skipped only when ``/usr/bin/chromium`` is missing (``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, sync_playwright

from assets.incoming import partition_key_for
from assets.names import IMAGE_ASSETS, PARTITIONS_NAME, REPORT, SETTINGS, SOURCE
from assets.steps import STEPS

from .server import REPO, DagsterDev

CHROMIUM = Path("/usr/bin/chromium")
#: Flags that work as root in a container (see /work/shared/DAGSTER_NOTES.md).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 1000}
LINEAGE_VIEWPORT = {"width": 1440, "height": 1600}

#: Materialised by ``kseg run`` before the browser looks (file name -> skimage photo).
PRE_MATERIALISED = {"astronaut.png": "astronaut", "coffee.jpg": "coffee"}
#: Registered only, then materialised from the UI.
UI_FILE, UI_PHOTO = "chelsea.png", "chelsea"
#: chelsea is 451x300: written whole, so the previews are drawn at their full sizes.
UI_PHOTO_SIZE = 451
#: Sizes (pixels) the previews and plots are drawn at (pipeline.render, pipeline.plots):
#: panels at most 300 (170) px high, strips at most 1,000 px wide (the metadata dialog's).
PREVIEW_HEIGHT, NEIGHBOURS_HEIGHT, STRIP_WIDTH = 300, 170, 1000
ELBOW_PLOT, REPORT_PLOT = (900, 360), (900, 280)

#: The pipeline's assets by stage (each drawn left of every asset that reads it).
ORDER = [
    [SOURCE],
    ["raw_image"],
    ["pixel_features"],
    ["elbow_metrics"],
    ["chosen_k"],
    ["segmented_image", "label_map", "segment_stats"],
    ["region_map", "region_boundaries"],
    ["region_stats"],
    [REPORT],
]

#: Check name -> the asset it checks.
CHECKS = {check.name: step.asset for step in STEPS.values() for check in step.checks}
CHECKS["covers_every_image"] = REPORT

#: Bounds (seconds).
KSEG_RUN_TIMEOUT = 240
RUN_TIMEOUT = 300
UI_TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="the UI test needs Debian's chromium at /usr/bin/chromium "
        "(scripts/test.sh installs it with apt-get when run as root)",
    ),
]


# --------------------------------------------------------------------------- set-up


def _write_photo(folder: Path, filename: str, photo: str, size: int = 200) -> str:
    """A scikit-image sample photo, at most ``size`` px a side; returns its partition key."""
    import skimage.data
    from PIL import Image

    image = Image.fromarray(getattr(skimage.data, photo)()[..., :3])
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / filename)
    return partition_key_for(filename)


def _start_kseg_run(dev: DagsterDev) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dev.home),
        "KSEG_INCOMING_DIR": str(dev.incoming),
        "KSEG_STORE_ROOT": str(dev.store),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "assets.cli", "run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def _finish_kseg_run(proc: subprocess.Popen[bytes]) -> None:
    try:
        output, _ = proc.communicate(timeout=KSEG_RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"kseg run took over {KSEG_RUN_TIMEOUT}s:\n{output.decode(errors='replace')}")
    assert proc.returncode == 0, f"kseg run failed:\n{output.decode(errors='replace')}"


def _register(dev: DagsterDev, key: str) -> None:
    """Register ``key`` as a partition, as the UI's "Add partition" does (GraphQL)."""
    data = dev.graphql(
        """mutation($key: String!, $name: String!) {
          addDynamicPartition(
            repositorySelector: {repositoryLocationName: "kseg", repositoryName: "__repository__"}
            partitionsDefName: $name, partitionKey: $key
          ) { __typename ... on PythonError { message } }
        }""",
        {"key": key, "name": PARTITIONS_NAME},
    )
    kind = data["addDynamicPartition"]["__typename"]
    # A sensor may have registered the new file already.
    assert kind in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"), data


def _dependencies(dev: DagsterDev) -> set[tuple[str, str]]:
    data = dev.graphql("{ assetNodes { assetKey { path } dependencyKeys { path } } }")
    return {
        ("/".join(dep["path"]), "/".join(node["assetKey"]["path"]))
        for node in data["assetNodes"]
        for dep in node["dependencyKeys"]
    }


def _run(dev: DagsterDev, run_id: str) -> dict[str, Any]:
    data = dev.graphql(
        """query($id: ID!) { runOrError(runId: $id) {
          __typename ... on Run { runId status startTime endTime tags { key value } }
        } }""",
        {"id": run_id},
    )
    return data["runOrError"]


def _find_run(dev: DagsterDev, prefix: str, key: str) -> str:
    data = dev.graphql(
        """query($key: String!) { runsOrError(
          filter: {tags: [{key: "dagster/partition", value: $key}]}, limit: 20
        ) { ... on Runs { results { runId } } } }""",
        {"key": key},
    )
    ids = [r["runId"] for r in data["runsOrError"]["results"] if r["runId"].startswith(prefix)]
    assert len(ids) == 1, f"no single run {prefix}* for partition {key}: {data}"
    return ids[0]


def _metadata(dev: DagsterDev, key: str) -> dict[str, dict[str, Any]]:
    """Each per-image asset's latest materialisation metadata for partition ``key``."""
    data = dev.graphql(
        """query($key: String!) { assetNodes {
          assetKey { path }
          assetMaterializations(partitions: [$key], limit: 1) {
            runId
            metadataEntries { label
              ... on IntMetadataEntry { intValue }
              ... on FloatMetadataEntry { floatValue }
              ... on TextMetadataEntry { text }
            }
          }
        } }""",
        {"key": key},
    )
    found = {}
    for node in data["assetNodes"]:
        events = node["assetMaterializations"]
        if events:
            entries = {e["label"]: e for e in events[0]["metadataEntries"]}
            found["/".join(node["assetKey"]["path"])] = {"runId": events[0]["runId"], **entries}
    return found


# ------------------------------------------------------------------------ browser


@contextlib.contextmanager
def _browser(profile: Path) -> Iterator[Page]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),  # a fresh profile: first-visit state, nothing remembered
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport=VIEWPORT,
        )
        try:
            context.set_default_timeout(UI_TIMEOUT_MS)
            context.set_default_navigation_timeout(2 * UI_TIMEOUT_MS)
            yield context.new_page()
        finally:
            context.close()


class Shots:
    """Numbered screenshots ``ui-NN-<step>.png`` in the screenshot folder (which other
    tests may share: only this test's earlier ``ui-*.png`` are removed)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("ui-[0-9][0-9]-*.png"):
            old.unlink()
        self.count = 0
        self.saved: list[Path] = []

    def take(self, page: Page, name: str, *, full_page: bool = False) -> Path:
        self.count += 1
        path = self.folder / f"ui-{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        self.saved.append(path)
        return path


def _dismiss_community_popup(page: Page, shots: Shots) -> None:
    """Skip Dagster's "Join the Dagster community" pop-up if this first visit shows it."""
    popup = page.get_by_text("Join the Dagster community")
    try:
        popup.wait_for(timeout=10_000)
    except PlaywrightError:
        return  # not shown (disabled, or already dismissed on this instance)
    shots.take(page, "community-popup")
    skip = page.get_by_role("button", name="Skip", exact=True)
    skip.click()
    popup.wait_for(state="hidden")
    # Should it come back on a later page, skip it there too.
    page.add_locator_handler(popup, lambda: skip.click())


def _fold_panels(page: Page) -> None:
    """More room for the lineage graph (cosmetic): fold the asset tree and the navigation."""
    jump_to = "//input[@placeholder='Jump to…']"
    tree = page.locator(f"xpath={jump_to}/ancestor::div[.//button][1]//button")
    with contextlib.suppress(PlaywrightError):
        tree.first.click(timeout=5_000)
    hide = page.get_by_role("button", name="Hide navigation")
    with contextlib.suppress(PlaywrightError):
        if hide.count():
            hide.click(timeout=5_000)


def _goto(page: Page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")


def _node_name(text: str, names: set[str]) -> str:
    """The asset a drawn node shows; small zooms shorten names to ``head…tail``."""
    if text in names:
        return text
    if "…" in text:
        head, tail = text.split("…", 1)
        matches = [n for n in names if n.startswith(head) and n.endswith(tail)]
        if len(matches) == 1:
            return matches[0]
    raise AssertionError(f"lineage shows a node {text!r} that is not an asset of {sorted(names)}")


_GRAPH_JS = """() => {
  const nodes = [];
  for (const fo of document.querySelectorAll('foreignObject')) {
    const name = fo.querySelector('[class*="assetName"]');
    if (!name) continue;
    nodes.push({text: name.textContent.trim(), x: +fo.getAttribute('x'),
                y: +fo.getAttribute('y'), w: +fo.getAttribute('width'),
                h: +fo.getAttribute('height')});
  }
  const edges = [];
  for (const path of document.querySelectorAll('svg path[marker-end]')) {
    const n = (path.getAttribute('d').match(/-?\\d+(?:\\.\\d+)?/g) || []).map(Number);
    if (n.length >= 4) edges.push([n[0], n[1], n[n.length - 2], n[n.length - 1]]);
  }
  return {nodes, edges};
}"""


def _drawn_graph(page: Page, names: set[str]) -> tuple[dict, set[tuple[str, str]], list]:
    """From the SVG: the asset nodes drawn (name -> box), the edges between them, and
    the edges that join no two drawn assets (left over while the drawing changes)."""
    graph = page.evaluate(_GRAPH_JS)
    nodes = {_node_name(n["text"], names): n for n in graph["nodes"]}

    def at(x: float, y: float, side: str) -> str | None:
        for name, n in nodes.items():
            edge_x = n["x"] + n["w"] if side == "right" else n["x"]
            if abs(edge_x - x) <= 20 and n["y"] <= y <= n["y"] + n["h"]:
                return name
        return None

    edges, loose = set(), []
    for x1, y1, x2, y2 in graph["edges"]:
        source, target = at(x1, y1, "right"), at(x2, y2, "left")
        if source and target:
            edges.add((source, target))
        else:
            loose.append((x1, y1, x2, y2))
    return nodes, edges, loose


def _metadata_row(page: Page, label: str) -> Locator:
    """The row of the metadata table whose key cell is exactly ``label``."""
    cell = page.get_by_role("cell", name=label, exact=True)
    return page.get_by_role("row").filter(has=cell).first


def _metadata_value(page: Page, label: str) -> str:
    return _metadata_row(page, label).get_by_role("cell").nth(1).inner_text().strip()


def _open_markdown_image(page: Page, label: str) -> tuple[Locator, dict[str, Any]]:
    """Open a markdown metadata value's dialog; wait until its picture has loaded."""
    _metadata_row(page, label).get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog").filter(has_text=label)
    image = dialog.locator("img").first
    image.wait_for(state="visible")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=10_000
    )
    size = image.evaluate("i => ({alt: i.alt, width: i.naturalWidth, height: i.naturalHeight})")
    return dialog, size


def _open_partition_event(page: Page, base: str, asset: str, key: str, run_id: str) -> None:
    _goto(page, f"{base}/assets/{asset}?view=events&partition={key}")
    header = re.compile(rf"Partition\s+{re.escape(key)}\s+materialized in run\s+{run_id[:8]}")
    page.get_by_text(header).wait_for()


# ---------------------------------------------------------------------------- test


class Laps:
    """Seconds spent per step, printed at the end (``pytest -s`` shows them)."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.laps: list[tuple[str, float]] = []

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.laps.append((name, now - self.last))
        self.last = now

    def __str__(self) -> str:
        steps = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.laps)
        return f"{time.monotonic() - self.start:.1f} s ({steps})"


@pytest.mark.timeout(900)
def test_the_ui_shows_lineage_launches_a_partition_and_renders_previews(tmp_path: Path) -> None:
    lap = Laps()
    shots = Shots(Path(os.environ.get("KSEG_SCREENSHOT_DIR") or REPO / "ci-artifacts/screenshots"))
    # The sensors and the schedule start stopped here (they would register the new file
    # and run it on their own); the pop-up is left on, as on a fresh instance.
    automation_off = {"KSEG_AUTOMATION_STATUS": "stopped"}
    with DagsterDev(tmp_path / "dagster", env=automation_off, nux=True) as dev:
        lap("server")
        for filename, photo in PRE_MATERIALISED.items():
            _write_photo(dev.incoming, filename, photo)
        kseg_run = _start_kseg_run(dev)  # in the background while the lineage is checked
        try:
            with _browser(tmp_path / "profile") as page:
                lap("browser")
                try:
                    _check_lineage(page, dev, shots)
                    lap("lineage")
                    _finish_kseg_run(kseg_run)
                    lap("kseg-run")
                    key = _write_photo(dev.incoming, UI_FILE, UI_PHOTO, UI_PHOTO_SIZE)
                    _register(dev, key)
                    run_id = _launch_partition_from_ui(page, dev, shots, key)
                    lap("launch")
                    _wait_for_success(page, dev, shots, run_id)
                    lap("run")
                    _check_partition_events(page, dev, shots, key, run_id)
                    lap("events")
                    _check_checks(page, dev, shots, key)
                    lap("checks")
                    _check_report(page, dev, shots)
                    lap("report")
                    page.set_viewport_size(LINEAGE_VIEWPORT)
                    _goto(page, f"{dev.url}/asset-groups")  # now with every image done
                    page.get_by_placeholder("Jump to…").wait_for()
                    _fold_panels(page)
                    page.get_by_text("raw_image", exact=True).wait_for()
                    page.wait_for_timeout(1_000)  # let the status colours arrive
                    shots.take(page, "lineage-after")
                    page.set_viewport_size(VIEWPORT)
                    lap("lineage-after")
                except BaseException:
                    with contextlib.suppress(Exception):
                        shots.take(page, "failure", full_page=True)
                    print(f"dagster dev log (tail):\n{dev.log_tail(120)}")
                    raise
        finally:
            if kseg_run.poll() is None:
                kseg_run.kill()
            kseg_run.communicate()  # reaps it and closes its pipe
    lap("stop")
    print(f"\nUI test: {lap}")
    print(f"screenshots in {shots.folder}: " + ", ".join(p.name for p in shots.saved))


# ----------------------------------------------------------------------- the steps


def _check_lineage(page: Page, dev: DagsterDev, shots: Shots) -> None:
    """Step 1: every asset drawn, edges == dependencies, laid out in pipeline order."""
    dependencies = _dependencies(dev)
    names = {name for step in ORDER for name in step} | {SETTINGS}
    assert {n for edge in dependencies for n in edge} == names, dependencies

    # The graph draws only what is in view: a tall page fits all of it at a readable zoom.
    page.set_viewport_size(LINEAGE_VIEWPORT)
    _goto(page, f"{dev.url}/asset-groups")
    page.get_by_text("Global asset lineage").first.wait_for()
    page.get_by_role("button", name=re.compile(r"Materialize all")).wait_for()
    _dismiss_community_popup(page, shots)
    _fold_panels(page)
    # Several groups start folded; Alt+E toggles "expand all groups".
    drawn = page.locator('foreignObject [class*="assetName"]')
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while drawn.count() < len(names) and time.monotonic() < deadline:
        page.keyboard.press("Alt+e")
        with contextlib.suppress(PlaywrightError):
            page.wait_for_function(
                f"document.querySelectorAll('foreignObject [class*=\"assetName\"]').length"
                f" >= {len(names)}",
                timeout=5_000,
            )
    # The graph is drawn in stages: wait (bounded) until it shows what is expected.
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    nodes, edges, loose = _drawn_graph(page, names)
    while (loose or set(nodes) != names or edges != dependencies) and (time.monotonic() < deadline):
        page.wait_for_timeout(500)
        nodes, edges, loose = _drawn_graph(page, names)
    shots.take(page, "lineage")
    assert set(nodes) == names, f"drawn: {sorted(nodes)}"
    assert not loose, f"edges (x1, y1, x2, y2) that join no two assets: {loose}"
    assert edges == dependencies, (
        f"edges drawn but not dependencies: {sorted(edges - dependencies)}; "
        f"dependencies not drawn: {sorted(dependencies - edges)}"
    )
    page.set_viewport_size(VIEWPORT)
    for a, b in dependencies:  # every step is drawn to the left of the steps reading it
        assert nodes[a]["x"] + nodes[a]["w"] <= nodes[b]["x"], f"{a} not left of {b}"
    # The settings come in where they are first read.
    assert nodes[SETTINGS]["x"] + nodes[SETTINGS]["w"] <= nodes["pixel_features"]["x"]
    chain = [(SOURCE, "raw_image"), ("raw_image", "pixel_features")]
    chain += [(SETTINGS, name) for name in IMAGE_ASSETS[1:]]
    chain += [("pixel_features", "elbow_metrics"), ("elbow_metrics", "chosen_k")]
    chain += [("chosen_k", out) for out in ORDER[5]] + [(out, REPORT) for out in ORDER[5]]
    assert set(chain) <= edges, sorted(set(chain) - edges)


def _launch_partition_from_ui(page: Page, dev: DagsterDev, shots: Shots, key: str) -> str:
    """Step 2: Materialize all -> pick one partition -> Launch 1 run; returns the run id."""
    _goto(page, f"{dev.url}/locations/kseg/jobs/segment_images")
    page.get_by_role("button", name=re.compile(r"Materialize all")).click()
    dialog = page.get_by_role("dialog").filter(has_text="Partition selection")
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_placeholder("Filter partitions").fill(key[:12])
    page.get_by_role("menuitem", name=re.compile(re.escape(key))).click()
    dialog.get_by_text(re.compile(r"Launch runs? to materialize")).click()  # close the picker
    dialog.get_by_text("1 partition", exact=True).wait_for()
    launch = dialog.get_by_role("button", name="Launch 1 run")
    launch.wait_for()
    shots.take(page, "launch-one-partition")
    launch.click()
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).first
    toast.wait_for()
    prefix = re.search(r"[0-9a-f]{8}", toast.inner_text()).group(0)
    shots.take(page, "launched")
    run_id = _find_run(dev, prefix, key)
    tags = {t["key"]: t["value"] for t in _run(dev, run_id)["tags"]}
    assert tags.get("dagster/from_ui") == "true", tags
    assert tags.get("dagster/partition") == key, tags
    return run_id


def _wait_for_success(page: Page, dev: DagsterDev, shots: Shots, run_id: str) -> None:
    """Step 2, continued: the run finishes in time, and the run page says Success."""
    done = ("SUCCESS", "FAILURE", "CANCELED")
    run = dev.wait_for(
        lambda: (r := _run(dev, run_id))["status"] in done and r,
        timeout=RUN_TIMEOUT,
        interval=1.0,
        what=f"run {run_id} to finish",
    )
    _goto(page, f"{dev.url}/runs/{run_id}")
    page.get_by_text("Success", exact=True).first.wait_for()
    page.get_by_text(re.compile(r"Finished execution of run")).first.wait_for()
    shots.take(page, "run-succeeded")
    assert run["status"] == "SUCCESS", run
    print(f"UI run {run_id[:8]}: {run['endTime'] - run['startTime']:.1f} s from start to end")


def _check_partition_events(
    page: Page, dev: DagsterDev, shots: Shots, key: str, run_id: str
) -> None:
    """Step 3: that partition's events show the preview, the elbow plot and the figures."""
    recorded = _metadata(dev, key)
    for asset in IMAGE_ASSETS:
        assert recorded[asset]["runId"] == run_id, (asset, recorded[asset]["runId"])
    seconds = {a: recorded[a].get("seconds", {}).get("floatValue") for a in IMAGE_ASSETS}
    print("UI run, seconds per step: " + ", ".join(f"{a} {t}" for a, t in seconds.items()))
    chosen = recorded["chosen_k"]["chosen_k"]["intValue"]
    strength = recorded["chosen_k"]["knee_strength"]["floatValue"]

    _open_partition_event(page, dev.url, "segmented_image", key, run_id)
    assert int(_metadata_value(page, "k")) == chosen
    dialog, preview = _open_markdown_image(page, "preview")
    # Three panels (original, segmented, boundaries): the 3:2 photo fills the strip's width.
    assert 0.9 * STRIP_WIDTH <= preview["width"] <= STRIP_WIDTH, preview
    assert 200 <= preview["height"] <= PREVIEW_HEIGHT, preview
    shots.take(page, "segmented-preview")
    dialog.get_by_role("button", name="Close").click()
    dialog, strip = _open_markdown_image(page, "neighbouring_k")
    # K-1, K, K+1 side by side (two panels when K is at an end of the range).
    assert strip["height"] == NEIGHBOURS_HEIGHT and strip["width"] <= STRIP_WIDTH, strip
    assert strip["width"] > 2 * NEIGHBOURS_HEIGHT, strip
    dialog.get_by_text(re.compile(rf"K={chosen} \(chosen\)")).first.wait_for()
    dialog.get_by_text("set_image_settings").first.wait_for()
    shots.take(page, "neighbouring-k")
    dialog.get_by_role("button", name="Close").click()

    _open_partition_event(page, dev.url, "elbow_metrics", key, run_id)
    rows = int(_metadata_value(page, "dagster/row_count"))
    assert rows == recorded["elbow_metrics"]["dagster/row_count"]["intValue"] > 1
    curve = _metadata_row(page, "wcss_curve")
    assert curve.locator("tbody tr").count() == rows  # the WCSS table, one row per K
    shots.take(page, "elbow-metrics")

    _open_partition_event(page, dev.url, "chosen_k", key, run_id)
    assert int(_metadata_value(page, "chosen_k")) == chosen
    assert math.isclose(float(_metadata_value(page, "knee_strength")), strength, rel_tol=1e-9)
    dialog, plot = _open_markdown_image(page, "elbow_plot")
    assert (plot["width"], plot["height"]) == ELBOW_PLOT, plot
    shots.take(page, "elbow-plot")
    dialog.get_by_role("button", name="Close").click()

    _open_partition_event(page, dev.url, "segment_stats", key, run_id)
    assert int(_metadata_value(page, "dagster/row_count")) == chosen  # one row per segment
    shots.take(page, "segment-stats")


def _check_report(page: Page, dev: DagsterDev, shots: Shots) -> None:
    """Step 5: the report, rebuilt with the UI's image, shows its plot across images."""
    run = dev.graphql(
        "mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {"
        " __typename ... on LaunchRunSuccess { run { runId } } } }",
        {
            "p": {
                "selector": {
                    "repositoryLocationName": "kseg",
                    "repositoryName": "__repository__",
                    "jobName": "segmentation_report_job",
                },
            }
        },
    )["launchRun"]
    assert run["__typename"] == "LaunchRunSuccess", run
    run_id = run["run"]["runId"]
    done = ("SUCCESS", "FAILURE", "CANCELED")
    finished = dev.wait_for(
        lambda: (r := _run(dev, run_id))["status"] in done and r,
        timeout=RUN_TIMEOUT,
        interval=1.0,
        what=f"report run {run_id} to finish",
    )
    assert finished["status"] == "SUCCESS", finished
    _goto(page, f"{dev.url}/assets/{REPORT}?view=events")
    page.get_by_text(re.compile(rf"Materialized in run\s+{run_id[:8]}")).first.wait_for()
    dialog, plot = _open_markdown_image(page, "across_images")
    assert (plot["width"], plot["height"]) == REPORT_PLOT, plot
    shots.take(page, "report-plot")
    dialog.get_by_role("button", name="Close").click()
    # The table is drawn inline, one row per image, every shown column whole.
    table = _metadata_row(page, "report")
    for image in (*PRE_MATERIALISED, UI_FILE):
        table.get_by_role("cell", name=image, exact=True).wait_for()
    for column in ("source_path", "status", "size", "chosen_k", "knee_strength", "reason"):
        table.get_by_text(column, exact=True).first.wait_for()
    shots.take(page, "report-table")


def _check_checks(page: Page, dev: DagsterDev, shots: Shots, key: str) -> None:
    """Step 4: each asset's checks tab lists its checks as passed."""
    by_asset: dict[str, list[str]] = {}
    for check, asset in CHECKS.items():
        by_asset.setdefault(asset, []).append(check)
    for asset, checks in by_asset.items():
        _goto(page, f"{dev.url}/assets/{asset}?view=checks")
        for check in checks:
            page.get_by_text(check, exact=True).first.click()
            page.get_by_text("Evaluation result").first.wait_for()
            result = page.get_by_text(re.compile(r"^(Passed|Failed)$")).first.inner_text()
            assert result == "Passed", (asset, check, result)
            if asset != REPORT:  # per-image checks: the latest evaluation is this partition's
                page.get_by_text(key, exact=True).first.wait_for()
        shots.take(page, f"checks-{asset.replace('_', '-')}")
