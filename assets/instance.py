"""The project's Dagster instance: where it lives, its ``dagster.yaml``, opening it safely.

The instance is ``$DAGSTER_HOME`` if set, else ``.dagster_home/`` in the repository. A
new one gets a ``dagster.yaml`` that turns telemetry and the first-visit pop-up off
and otherwise keeps Dagster's defaults: SQLite storage (runs, events and schedules in
``<home>/history`` and ``<home>/schedules``), the run queue, the default run launcher.
Creating it holds a file lock, so two ``kseg run`` started at once on a new home
do not both create its databases.
"""

import json
import os
import sqlite3
from pathlib import Path

import dagster as dg
import yaml
from filelock import FileLock

from pipeline.errors import KsegError
from pipeline.images import DEFAULT_MAX_PIXELS
from pipeline.io import atomic_write_bytes

from .dagster_gaps import apply_pool_default
from .names import IMAGE_POOL
from .storage import PROJECT_ROOT

__all__ = [
    "DAGSTER_YAML",
    "diagnose",
    "image_run_limit",
    "instance_yaml",
    "machine_memory",
    "open_instance",
    "project_home",
]

_BODY = """\
telemetry:
  enabled: false
nux:
  enabled: false
# Dagster's run queue (its default), checked every second instead of every 5.
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
# Runs stuck starting are marked failed by the daemon (the default run launcher cannot
# see a killed run worker; `kseg run` fails the runs a killed `kseg run` left behind).
run_monitoring:
  enabled: true
  poll_interval_seconds: 30
"""
DAGSTER_YAML = (
    """\
# Dagster instance of the kseg project, created by `kseg run`.
# Open the UI on it with `kseg ui` (DAGSTER_HOME=<this folder> dagster dev -w workspace.yaml).
"""
    + _BODY
    + """\
# The memory budget: at most {image_runs} runs of per-image steps (pool kseg_images) at
# once, each up to {run_gb} GB for an image of {megapixels} megapixels, within {budget_gb} GB
# (3/4 of this machine's memory); more runs wait in the run queue. Change it here, or in
# the UI (Deployment > Concurrency) or with `dagster instance concurrency set kseg_images N`.
concurrency:
  pools:
    granularity: run
    default_limit: {image_runs}
"""
)
#: Peak memory of one run of the per-image steps: per pixel of its largest image, plus
#: Python, Dagster and the code location. A whole ``kseg run`` on a 100-megapixel JPEG
#: mosaic peaked at 3.81 GB, 38 bytes per pixel all included
#: (``benchmarks/bench_memory.py``, 2026-12-02); rounded up.
RUN_BYTES_PER_PIXEL = 40
RUN_BASE_BYTES = 400 * 10**6

#: The head of the ``dagster.yaml`` earlier kseg versions wrote: found unedited, it is
#: replaced (the pooled event log they named was removed; the databases are the same).
_EARLIER_HEAD = "# Dagster instance of the kseg project, created by `kseg run`.\n"
_EARLIER_BODIES = (
    _BODY.replace("{", "{{").replace("}", "}}"),  # 2026-12-01: no memory budget
    "telemetry:\n  enabled: false\nnux:\n  enabled: false\n",
    "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
    "# Dagster's SQLite event log with pooled connections (see assets/event_storage.py).\n"
    "event_log_storage:\n  module: assets.event_storage\n  class: PooledSqliteEventLogStorage\n"
    "  config:\n    base_dir: {runs_dir}\n",
)


def project_home() -> Path:
    """``$DAGSTER_HOME`` if set, else ``.dagster_home`` in the project root."""
    env = os.environ.get("DAGSTER_HOME")
    return Path(env).expanduser().absolute() if env else PROJECT_ROOT / ".dagster_home"


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def image_run_limit(memory: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """How many runs of per-image steps fit in 3/4 of ``memory`` bytes at once (at least 1),
    each budgeted for an image of ``max_pixels`` (the largest kseg accepts)."""
    per_run = max_pixels * RUN_BYTES_PER_PIXEL + RUN_BASE_BYTES
    return max(1, int(0.75 * memory // per_run))


def instance_yaml(home: Path, *, image_runs: int | None = None) -> str:
    """The ``dagster.yaml`` of a new kseg instance in ``home``.

    Parameters
    ----------
    home : Path
    image_runs : int, optional
        The memory budget, as runs of per-image steps at once; default
        :func:`image_run_limit` of :func:`machine_memory`.
    """
    del home  # Dagster's defaults place every database under the home itself
    memory = machine_memory()
    runs = image_run_limit(memory) if image_runs is None else image_runs
    return DAGSTER_YAML.format(
        image_runs=runs,
        run_gb=f"{(DEFAULT_MAX_PIXELS * RUN_BYTES_PER_PIXEL + RUN_BASE_BYTES) / 1e9:.1f}",
        megapixels=DEFAULT_MAX_PIXELS // 10**6,
        budget_gb=f"{0.75 * memory / 1e9:.1f}",
    )


def _written_by_earlier_kseg(text: str, home: Path) -> bool:
    runs_dir = json.dumps((home / "history" / "runs").as_posix())
    lines = text.split("\n", 2)
    if len(lines) < 3 or not text.startswith(_EARLIER_HEAD):
        return False
    body = lines[2]
    return any(body == b.format(runs_dir=runs_dir) for b in _EARLIER_BODIES)


def diagnose(home: Path, error: BaseException) -> str:
    """Which file of the instance in ``home`` is unusable, why, and what to do."""
    config = home / "dagster.yaml"
    try:
        document = yaml.safe_load(config.read_text(encoding="utf-8")) if config.exists() else {}
        if document is not None and not isinstance(document, dict):
            raise yaml.YAMLError("it is not a mapping of settings")
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0]
        return f"{config}: not a valid dagster.yaml ({reason}); fix it, or delete it to get kseg's"
    for database in sorted(home.rglob("*.db")):
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
                verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            verdict = str(exc)
        if verdict != "ok":
            return (
                f"{database}: the database is damaged ({verdict}); move it aside "
                f"(mv '{database}' '{database}.broken') to start this part of the run history "
                "afresh, or restore it from a backup"
            )
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"cannot open the Dagster instance in {home}: {type(error).__name__}: {first}"


def open_instance(home: str | os.PathLike[str] | None = None) -> dg.DagsterInstance:
    """The persistent instance in ``home`` (default :func:`project_home`), created if new.

    Creation (the folder, its ``dagster.yaml`` and every database) happens under a file
    lock in the home, so concurrent first uses do not race. A ``dagster.yaml`` written
    by an earlier kseg and never edited is replaced by the current one; any other is
    used as it is.

    Raises
    ------
    KsegError
        If the instance cannot be opened: naming the damaged file and what to do.
    """
    path = Path(home).expanduser().absolute() if home else project_home()
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    with FileLock(os.fspath(path / ".kseg-instance.lock")):
        if not config.exists() or _written_by_earlier_kseg(config.read_text("utf-8"), path):
            atomic_write_bytes(config, instance_yaml(path).encode("utf-8"))
        try:
            instance = dg.DagsterInstance.from_config(str(path))
            # Touch every storage now, while the lock is held, so their schemas are
            # created by one process only.
            instance.get_run_records(limit=1)
            instance.get_dynamic_partitions("images")
            instance.all_instigator_state()
            apply_pool_default(instance, IMAGE_POOL)
        except Exception as exc:  # any failure to open: say which file, and why
            raise KsegError(diagnose(path, exc)) from exc
    return instance
