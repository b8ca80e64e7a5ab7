"""``incoming_images_sensor``: the incoming folder drives the ``images`` partitions.

What a tick does
----------------
1. Walk the incoming folder and its subfolders (:func:`assets.incoming.scan_incoming`
   decides what is an image and its partition key) and ``stat`` every image:
   ``(size, mtime_ns)``.
2. Compare each file with what the sensor saw before (its *per-file state*, below).
   An image whose ``(size, mtime_ns)`` and partition are unchanged since a
   confirmed request costs nothing more: it is never read again. Only the others
   are hashed (SHA-256 of the bytes):

   * **new** file: its partition is added and a ``segment_images`` run requested;
     a registered image whose bytes a run already read (``kseg run``, a run from the
     UI: the latest ``source_image`` observation has its SHA-256) needs no request;
   * **changed** bytes: a run is requested; a file only touched (new mtime, same
     bytes) requests nothing;
   * **deleted** file: its partition is removed (``build_delete_request``) and its
     stored outputs are moved to the store's trash (:func:`trash_outputs`);
   * a file **still being written** waits: one whose mtime is less than
     ``settle_seconds`` old is only noted, and it is taken when a later look finds
     the same ``(size, mtime_ns)`` (or it has been quiet for ``settle_seconds``); a
     file that changes while it is hashed waits too. Temporary names (``*.part``,
     ``*.tmp``, ``~`` files, dot-files) are never images; the file is taken once
     renamed to its final name.
3. Report files that are skipped (unsupported extension, refused links, names that
   are not UTF-8, key clashes, files that cannot be read) once, when they first
   appear, as a warning in the tick's log; not on every tick. A file that exists but
   cannot be read is never taken for deleted.

Bounded ticks
-------------
At most ``max_runs`` run requests per tick. While the images to request fit, each
gets its own single-partition run (a few files dropped together are segmented side
by side); a bigger burst is spread over ``max_runs`` runs of up to ``batch_size``
images each (a contiguous range of the partition order, like a backfill batch). At
most ``max_runs * batch_size`` files are hashed per tick, and hashing stops early
after ``time_budget`` seconds.
The rest is taken on the next ticks: 10,000 new files are registered and requested
500 per tick by default, and a tick never approaches Dagster's 60 s timeout. A tick
with nothing new costs one directory walk, one ``stat`` per file and two small
queries.

Per-file state and cursor
-------------------------
The per-file state (``relpath, size, mtime_ns, sha256``, the SHA-256 a run was
requested for, and when) lives in the Dagster instance's key-value store
(``instance.daemon_cursor_storage``, the table Dagster keeps its own daemon cursors
in), sharded by partition key into :data:`SHARDS` JSON values; a tick rewrites only
the shards it changed. The sensor's cursor stays small and constant in size (tens
of bytes, whatever the number of files): an *epoch* (random, new when the cursor is
empty or reset), the number of the last committed tick, and a digest of the
skipped-file report.

A tick writes its state before Dagster commits the tick (its cursor and run
requests). State written by a tick that was never committed (the evaluation timed
out, the daemon died) carries a tick number above the committed one, so the next
tick treats those requests as unconfirmed and makes them again, with the same run
keys, unless a run has read the file's bytes meanwhile (the latest ``source_image``
observation has its SHA-256). Resetting the cursor in the UI starts a new epoch:
every image is checked again that way, and requested again only if no run has read
its current bytes.

Run keys
--------
One image: ``<partition key>:<first 16 hex of its SHA-256>:<mtime_ns>``; a batch:
``batch:<first>..<last>:<digest of its members' keys>``. Dagster skips a request
whose run key this sensor already used, so repeating a request is harmless, while
a file that changes back to earlier bytes (a new mtime) is still re-segmented.

Runs use the ``segment_images`` job (in-process executor) with the default run
config and every per-image asset selected explicitly (recorded on the run). They
recompute every step of their images, so the automation conditions
(:mod:`assets.automation`) see each step updated after its inputs and request
nothing more.
"""

import contextlib
import hashlib
import json
import os
import secrets
import stat
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from pipeline.images import SUPPORTED_EXTENSIONS

from .automation import LAUNCHED_BY_TAG, default_status, positive_int_env
from .incoming import Scan, _is_temporary, scan_incoming
from .jobs import segment_images
from .keys import BATCH_SIZE, IMAGE_ASSETS, PARTITIONS_NAME, SOURCE
from .partitions import IMAGES
from .planning import batches
from .provenance import DATA_VERSION_TAG
from .storage import KsegStorage
from .store import Store, StoreError

__all__ = [
    "BATCH_ENV",
    "INTERVAL_ENV",
    "MAX_RUNS_ENV",
    "SENSOR_NAME",
    "SETTLE_ENV",
    "SHARDS",
    "TIME_BUDGET_ENV",
    "TRASH_FOLDER",
    "FileStateStore",
    "SeenFile",
    "SensorCursor",
    "SensorSettings",
    "TickReport",
    "build_incoming_images_sensor",
    "evaluate_incoming",
    "incoming_images_sensor",
    "trash_outputs",
]

SENSOR_NAME = "incoming_images_sensor"
INTERVAL_ENV = "KSEG_SENSOR_INTERVAL_SECONDS"
SETTLE_ENV = "KSEG_SENSOR_SETTLE_SECONDS"
MAX_RUNS_ENV = "KSEG_SENSOR_MAX_RUNS"
BATCH_ENV = "KSEG_SENSOR_BATCH_SIZE"
TIME_BUDGET_ENV = "KSEG_SENSOR_TIME_BUDGET_SECONDS"

#: Folder under the storage root that receives the outputs of deleted images.
TRASH_FOLDER = "trash"
#: Number of key-value entries the per-file state is split over.
SHARDS = 64

_CHUNK = 1 << 20
_LOCK_WAIT = 0.5  # seconds to wait for a running step to release an image before trashing
_LISTED = 20  # skipped files named in one warning
_SELECTION = [dg.AssetKey(name) for name in IMAGE_ASSETS]
_QUERY_CHUNK = 500  # partition keys per query


def _float_env(name: str, default: float, environ: Mapping[str, str]) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {raw!r}")
    return value


@dataclass(frozen=True)
class SensorSettings:
    """How often the sensor ticks and how much one tick may do.

    Attributes
    ----------
    interval_seconds : int
        Minimum seconds between ticks (``KSEG_SENSOR_INTERVAL_SECONDS``, default 30).
    settle_seconds : float
        A file modified less than this long ago is only taken when a later look finds
        it unchanged (``KSEG_SENSOR_SETTLE_SECONDS``, default 2).
    max_runs : int
        Run requests per tick (``KSEG_SENSOR_MAX_RUNS``, default 10).
    batch_size : int
        Images per run request (``KSEG_SENSOR_BATCH_SIZE``, default
        :data:`~assets.keys.BATCH_SIZE`).
    time_budget : float
        Seconds of hashing per tick, after which the rest waits for the next tick
        (``KSEG_SENSOR_TIME_BUDGET_SECONDS``, default 20).
    """

    interval_seconds: int = 30
    settle_seconds: float = 2.0
    max_runs: int = 10
    batch_size: int = BATCH_SIZE
    time_budget: float = 20.0

    @property
    def max_images(self) -> int:
        """Most files hashed, requested or removed in one tick."""
        return self.max_runs * self.batch_size

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "SensorSettings":
        """The settings from the environment variables named above.

        Raises
        ------
        ValueError
            Naming the variable, if a value is invalid.
        """
        env = dict(os.environ if environ is None else environ)
        base = cls()
        return cls(
            interval_seconds=positive_int_env(INTERVAL_ENV, base.interval_seconds, env),
            settle_seconds=_float_env(SETTLE_ENV, base.settle_seconds, env),
            max_runs=positive_int_env(MAX_RUNS_ENV, base.max_runs, env),
            batch_size=positive_int_env(BATCH_ENV, base.batch_size, env),
            time_budget=_float_env(TIME_BUDGET_ENV, base.time_budget, env),
        )


@dataclass(frozen=True)
class SensorCursor:
    """The sensor's cursor: small and of constant size.

    Attributes
    ----------
    epoch : str
        8 hex digits, new when the cursor is empty (first tick, or reset in the UI).
    seq : int
        Number of the last tick Dagster committed.
    skipped : str
        Digest of the list of skipped files last reported ("" if none).
    """

    epoch: str
    seq: int = 0
    skipped: str = ""

    def to_json(self) -> str:
        """The cursor as compact JSON."""
        return json.dumps(
            {"v": 1, "epoch": self.epoch, "seq": self.seq, "skipped": self.skipped},
            separators=(",", ":"),
        )

    @classmethod
    def parse(cls, text: str | None) -> "SensorCursor":
        """Parse :meth:`to_json` output; an empty or unreadable cursor starts a new epoch."""
        try:
            data = json.loads(text) if text else None
            if isinstance(data, dict) and data.get("v") == 1:
                epoch, seq, skipped = data["epoch"], data["seq"], data["skipped"]
                if isinstance(epoch, str) and isinstance(seq, int) and isinstance(skipped, str):
                    return cls(epoch=epoch, seq=seq, skipped=skipped)
        except (ValueError, KeyError, TypeError):
            pass
        return cls(epoch=secrets.token_hex(4))


@dataclass(frozen=True)
class SeenFile:
    """What the sensor knows about one image file (one partition key).

    Attributes
    ----------
    relpath : str
    size, mtime_ns : int
        The last look at the file.
    sha256 : str
        SHA-256 of the bytes at that look; "" while the file is settling.
    requested : str
        The SHA-256 a run was last requested for; "" if none.
    epoch : str
    tick : int
        Epoch and tick of that request (confirmed once the cursor reaches them).
    """

    relpath: str
    size: int
    mtime_ns: int
    sha256: str = ""
    requested: str = ""
    epoch: str = ""
    tick: int = 0

    @property
    def look(self) -> tuple[int, int]:
        """``(size, mtime_ns)``."""
        return self.size, self.mtime_ns

    def confirmed(self, cursor: SensorCursor) -> bool:
        """True if the request recorded here belongs to a tick Dagster committed."""
        return bool(self.requested) and self.epoch == cursor.epoch and self.tick <= cursor.seq

    def to_row(self) -> list:
        """A compact JSON row."""
        return [
            self.relpath,
            self.size,
            self.mtime_ns,
            self.sha256,
            self.requested,
            self.epoch,
            self.tick,
        ]

    @classmethod
    def from_row(cls, row: list) -> "SeenFile":
        """Inverse of :meth:`to_row`."""
        return cls(*row)


class FileStateStore:
    """The sensor's per-file state in the instance's key-value store.

    Parameters
    ----------
    instance : DagsterInstance
    namespace : str
        Prefix of the keys (the sensor's name).

    Notes
    -----
    Keys ``kseg/<namespace>/files/<00..63>`` hold ``{partition key: row}`` as JSON;
    ``kseg/<namespace>/skipped`` holds the last skipped-file list.
    """

    def __init__(self, instance: dg.DagsterInstance, namespace: str = SENSOR_NAME) -> None:
        self._storage = instance.daemon_cursor_storage
        self._prefix = f"kseg/{namespace}"
        self._shards: dict[int, dict[str, list]] = {}
        self._stored: set[str] = set()

    def _shard_key(self, shard: int) -> str:
        return f"{self._prefix}/files/{shard:02d}"

    @staticmethod
    def shard_of(key: str) -> int:
        """The shard of a partition key."""
        return zlib.crc32(key.encode("utf-8")) % SHARDS

    def load(self) -> dict[str, SeenFile]:
        """Every file's state, by partition key (one query)."""
        names = {self._shard_key(i): i for i in range(SHARDS)}
        values = self._storage.get_cursor_values(set(names))
        self._stored = set(values)
        self._shards = {i: {} for i in range(SHARDS)}
        state: dict[str, SeenFile] = {}
        for name, text in values.items():
            try:
                rows = json.loads(text)
            except ValueError:
                continue  # an unreadable shard is rebuilt: its files look new (same run keys)
            if not isinstance(rows, dict):
                continue
            shard = self._shards[names[name]]
            for key, row in rows.items():
                with contextlib.suppress(TypeError, ValueError):
                    state[key] = SeenFile.from_row(row)
                    shard[key] = row
        return state

    def save(self, updates: Mapping[str, SeenFile | None]) -> int:
        """Apply ``updates`` (None deletes) and write the shards they touch.

        Returns
        -------
        int
            Number of shards written.
        """
        touched: set[int] = set()
        for key, entry in updates.items():
            shard = self.shard_of(key)
            rows = self._shards.setdefault(shard, {})
            if entry is None:
                if rows.pop(key, None) is None:
                    continue
            else:
                rows[key] = entry.to_row()
            touched.add(shard)
        values = {
            self._shard_key(i): json.dumps(self._shards[i], separators=(",", ":"))
            for i in sorted(touched)
        }
        self._set(values)
        return len(touched)

    def get_list(self, name: str) -> list[str]:
        """A stored list of strings (empty if absent)."""
        text = self._storage.get_cursor_values({f"{self._prefix}/{name}"}).get(
            f"{self._prefix}/{name}"
        )
        try:
            value = json.loads(text) if text else []
        except ValueError:
            return []
        return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []

    def set_list(self, name: str, items: list[str]) -> None:
        """Store a list of strings."""
        key = f"{self._prefix}/{name}"
        if key not in self._stored and self._storage.get_cursor_values({key}):
            self._stored.add(key)
        self._set({key: json.dumps(items, separators=(",", ":"))})

    def _set(self, values: Mapping[str, str]) -> None:
        # Dagster's set_cursor_values inserts all pairs, and only when that fails updates
        # them; a mix of new and existing keys would lose the new ones. Write them apart.
        new = {k: v for k, v in values.items() if k not in self._stored}
        old = {k: v for k, v in values.items() if k in self._stored}
        if new:
            self._storage.set_cursor_values(new)
            self._stored.update(new)
        if old:
            self._storage.set_cursor_values(old)


@dataclass
class TickReport:
    """What one tick found and did (logged, and returned for tests and the benchmark).

    Attributes
    ----------
    images : int
        Image files in the folder.
    new, changed : list of str
        Partition keys requested this tick because they are new / have new bytes.
    unchanged, touched, settling, deferred, repeated, adopted : int
        Files not re-read; re-read with the same bytes; still being written; left for
        a later tick by the per-tick bounds; requested again because the tick that
        requested them was not committed (or the cursor was reset); registered
        images whose bytes a run already read (no request needed).
    unreadable : list of str
        ``path (reason)`` of image files that exist but cannot be read (left alone,
        reported with the skipped files).
    deleted : list of str
        Partitions removed.
    trashed : dict of str to str
        Partition key to where its outputs went.
    skipped_new : list of str
        Skipped files reported for the first time (``path (reason)``).
    runs : int
        Run requests made.
    hashed : int
        Files read and hashed.
    seconds : float
    """

    images: int = 0
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    touched: int = 0
    settling: int = 0
    deferred: int = 0
    repeated: int = 0
    adopted: int = 0
    unreadable: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    trashed: dict[str, str] = field(default_factory=dict)
    skipped_new: list[str] = field(default_factory=list)
    runs: int = 0
    hashed: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the tick's log and skip message."""
        return (
            f"{self.images} image(s): {len(self.new)} new, {len(self.changed)} changed, "
            f"{len(self.deleted)} deleted, "
            f"{self.unchanged + self.touched + self.adopted} unchanged, "
            f"{self.settling} still being written, {self.deferred} left for the next tick, "
            f"{len(self.unreadable)} unreadable; "
            f"{self.runs} run request(s), {self.hashed} file(s) hashed in {self.seconds:.2f} s"
        )


def _look(path: Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of a regular file, None if it is gone.

    Raises
    ------
    OSError
        If it exists but cannot be examined (it is then neither read nor removed).
    """
    try:
        info = os.stat(path)  # follows a link (scan_incoming only keeps links inside the folder)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return info.st_size, info.st_mtime_ns


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def unsupported_files(root: Path) -> list[str]:
    """Files of the incoming folder that are neither images nor temporary names.

    Walks the folders :func:`~assets.incoming.scan_incoming` walks (no dot-folders, no
    linked folders) and returns sorted ``/``-separated relative paths.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".") and not os.path.islink(os.path.join(dirpath, d))
        ]
        for name in filenames:
            if _is_temporary(name) or os.path.splitext(name)[1].lower() in SUPPORTED_EXTENSIONS:
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            found.append(_printable(rel))
    return sorted(found)


def _skipped(scan: Scan, root: Path) -> list[str]:
    listed = [f"{path} (unsupported file type)" for path in unsupported_files(root)]
    listed += [f"{item.relpath} ({item.reason})" for item in scan.refused]
    return sorted(listed)


def trash_outputs(
    store: Store, key: str, *, source_path: str | None = None, when: datetime | None = None
) -> str | None:
    """Move a partition's stored outputs to ``<store root>/trash/<UTC time>-<key>/``.

    The move holds the image's store lock, so it never interleaves with a run writing
    that image. A ``trashed.json`` beside the files says what they were.

    Parameters
    ----------
    store : Store
    key : str
        The partition key.
    source_path : str, optional
        The deleted file's path in the incoming folder (recorded in ``trashed.json``).
    when : datetime, optional
        Time of the deletion (default now).

    Returns
    -------
    str or None
        Where the outputs went, or None if the partition had none.

    Raises
    ------
    StoreError
        If a run holds the image's lock (try again on the next tick).
    """
    when = when or datetime.now(UTC)
    folder = store.folder(key)
    with store.lock(key, timeout=_LOCK_WAIT):
        if not folder.exists():
            return None
        stamp = when.strftime("%Y%m%dT%H%M%S%fZ")
        target = store.root / TRASH_FOLDER / f"{stamp}-{key}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if store.local:
            os.rename(folder, target)
        else:
            folder.fs.mv(folder.path, target.path, recursive=True)
        note = {
            "partition_key": key,
            "source_path": source_path,
            "trashed_at": when.isoformat(timespec="seconds"),
            "reason": "the image was deleted from the incoming folder",
        }
        (target / "trashed.json").write_text(json.dumps(note, indent=1), encoding="utf-8")
    return str(target)


def _run_request(members: list[str], entries: Mapping[str, SeenFile]) -> dg.RunRequest:
    tokens = [f"{k}:{entries[k].sha256[:16]}:{entries[k].mtime_ns}" for k in members]
    tags = {LAUNCHED_BY_TAG: SENSOR_NAME, "kseg/images": str(len(members))}
    if len(members) == 1:
        return dg.RunRequest(
            run_key=tokens[0], partition_key=members[0], asset_selection=_SELECTION, tags=tags
        )
    digest = hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()[:24]
    return dg.RunRequest(
        run_key=f"batch:{members[0]}..{members[-1]}:{digest}",
        asset_selection=_SELECTION,
        tags={
            **tags,
            "dagster/asset_partition_range_start": members[0],
            "dagster/asset_partition_range_end": members[-1],
        },
    )


def _observed(instance: dg.DagsterInstance, keys: list[str]) -> dict[str, str]:
    """The latest recorded data version (SHA-256) of ``source_image`` per partition."""
    storage = instance.event_log_storage
    found: dict[str, str] = {}
    for i in range(0, len(keys), _QUERY_CHUNK):
        tags = storage.get_latest_tags_by_partition(
            dg.AssetKey(SOURCE),
            dg.DagsterEventType.ASSET_OBSERVATION,
            [DATA_VERSION_TAG],
            asset_partitions=keys[i : i + _QUERY_CHUNK],
        )
        found.update({k: v[DATA_VERSION_TAG] for k, v in tags.items() if DATA_VERSION_TAG in v})
    return found


def _group(
    order: list[str], wanted: Mapping[str, SeenFile], settings: SensorSettings
) -> list[list[str]]:
    # One run per image while that fits in max_runs (a few files dropped at once run side
    # by side); bigger bursts are spread over max_runs runs of up to batch_size images.
    size = min(settings.batch_size, max(1, -(-len(wanted) // settings.max_runs)))
    index = {key: i for i, key in enumerate(order)}
    ranges = batches(order, set(wanted), size)[: settings.max_runs]
    return [order[index[start] : index[end] + 1] for start, end in ranges]


def evaluate_incoming(
    context: dg.SensorEvaluationContext,
    storage: KsegStorage,
    settings: SensorSettings,
    *,
    clock: Callable[[], float] = time.time,
) -> tuple[dg.SensorResult, TickReport]:
    """One tick of :data:`incoming_images_sensor` (see the module docstring).

    Parameters
    ----------
    context : SensorEvaluationContext
        Needs an instance; its cursor is the last committed one.
    storage : KsegStorage
    settings : SensorSettings
    clock : callable
        Wall-clock time in seconds (compared with file mtimes).

    Returns
    -------
    result : SensorResult
    report : TickReport
    """
    started = time.perf_counter()
    report = TickReport()
    cursor = SensorCursor.parse(context.cursor)
    seq = cursor.seq + 1
    root = storage.incoming()
    try:
        scan = scan_incoming(root)
    except FileNotFoundError:
        message = f"incoming folder {root} does not exist; nothing is added or removed"
        return dg.SensorResult(skip_reason=message, cursor=cursor.to_json()), report
    instance = context.instance
    order = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    registered = set(order)
    states = FileStateStore(instance)
    known = states.load()
    now = clock()
    updates: dict[str, SeenFile | None] = {}
    wanted: dict[str, SeenFile] = {}
    present: set[str] = set()
    report.images = len(scan.images)

    for image in scan.images:
        key = image.key
        try:
            look = _look(image.path)
        except OSError as exc:  # there, but not for us to read: never removed for that
            present.add(key)
            report.unreadable.append(f"{image.relpath} (cannot be read: {_reason(exc)})")
            continue
        if look is None:  # gone since the walk: handled as deleted
            continue
        present.add(key)
        entry = known.get(key)
        confirmed = entry is not None and entry.confirmed(cursor)
        same_look = entry is not None and entry.look == look
        if entry is not None and same_look and entry.sha256:
            if confirmed and entry.requested == entry.sha256 and key in registered:
                report.unchanged += 1
            else:
                wanted[key] = entry  # bytes known; the request is missing or unconfirmed
            continue
        prior = entry or SeenFile(image.relpath, *look)
        if not same_look and now - look[1] / 1e9 < settings.settle_seconds:
            updates[key] = replace(
                prior, relpath=image.relpath, size=look[0], mtime_ns=look[1], sha256=""
            )
            report.settling += 1
            continue
        over = time.perf_counter() - started > settings.time_budget
        if report.hashed >= settings.max_images or over:
            report.deferred += 1
            continue
        try:
            sha = _sha256_file(image.path)
            after = _look(image.path)
        except FileNotFoundError:  # deleted while being read: removed next tick
            continue
        except OSError as exc:
            report.unreadable.append(f"{image.relpath} (cannot be read: {_reason(exc)})")
            continue
        finally:
            report.hashed += 1
        if after != look:  # changed while being read: still being written
            if after is not None:
                updates[key] = replace(prior, size=after[0], mtime_ns=after[1], sha256="")
            report.settling += 1
            continue
        seen = replace(prior, relpath=image.relpath, size=look[0], mtime_ns=look[1], sha256=sha)
        updates[key] = seen
        if confirmed and entry is not None and entry.requested == sha and key in registered:
            report.touched += 1
            continue
        wanted[key] = seen

    # Bytes Dagster has already seen (a run read them: kseg run, a run from the UI, this
    # sensor's run of an uncommitted tick) need no run from the sensor; an observation
    # made outside a run is automation's to act on (assets.automation).
    observed = _observed(instance, [key for key in wanted if key in registered])
    for key, version in observed.items():
        if wanted[key].sha256 == version:
            updates[key] = replace(wanted.pop(key), requested=version, epoch=cursor.epoch, tick=seq)
            report.adopted += 1

    # Requests: registered partitions in their order, then the new ones in path order.
    new_keys = [key for key in wanted if key not in registered]
    groups = _group(order + new_keys, wanted, settings)
    requests = [_run_request(members, wanted) for members in groups]
    requested = {key for members in groups for key in members}
    report.deferred += len(wanted) - len(requested)
    for key in requested:
        entry = known.get(key)
        if key not in registered or entry is None or not entry.requested:
            report.new.append(key)
        elif entry.requested != wanted[key].sha256:
            report.changed.append(key)
        else:
            report.repeated += 1
        updates[key] = replace(
            wanted[key], requested=wanted[key].sha256, epoch=cursor.epoch, tick=seq
        )
    report.runs = len(requests)
    adds = [key for key in new_keys if key in requested]

    # Deletions: registered partitions without a file; state of vanished unregistered files.
    store = storage.store()
    for key in [k for k in order if k not in present][: settings.max_images]:
        if time.perf_counter() - started > settings.time_budget:
            report.deferred += 1
            continue
        entry = known.get(key)
        try:
            where = trash_outputs(store, key, source_path=entry.relpath if entry else None)
        except StoreError as exc:  # a run holds the image: try again next tick
            context.log.info(f"{key}: outputs not moved to the trash yet ({exc})")
            report.deferred += 1
            continue
        if where:
            report.trashed[key] = where
        report.deleted.append(key)
        updates[key] = None
    for key in known:
        if key not in present and key not in registered:
            updates[key] = None

    # Skipped files: reported once, when the list changes.
    skipped = sorted([*_skipped(scan, root), *report.unreadable])
    digest = hashlib.sha256("\n".join(skipped).encode("utf-8")).hexdigest()[:16] if skipped else ""
    if digest != cursor.skipped:
        before = set(states.get_list("skipped"))
        report.skipped_new = [item for item in skipped if item not in before]
        states.set_list("skipped", skipped)
    if report.skipped_new:
        shown = "; ".join(report.skipped_new[:_LISTED])
        more = len(report.skipped_new) - _LISTED
        context.log.warning(
            f"skipping {len(report.skipped_new)} file(s) in {root}: {shown}"
            + (f"; and {more} more" if more > 0 else "")
        )

    if updates:
        states.save(updates)
    for key, where in report.trashed.items():
        context.log.info(f"{key}: image deleted; its outputs were moved to {where}")
    report.seconds = time.perf_counter() - started
    context.log.info(report.summary())
    partition_requests: list = []
    if adds:
        partition_requests.append(IMAGES.build_add_request(adds))
    if report.deleted:
        partition_requests.append(IMAGES.build_delete_request(report.deleted))
    result = dg.SensorResult(
        run_requests=requests,
        skip_reason=None if requests else report.summary(),
        cursor=SensorCursor(epoch=cursor.epoch, seq=seq, skipped=digest).to_json(),
        dynamic_partitions_requests=partition_requests,
    )
    return result, report


def build_incoming_images_sensor(
    settings: SensorSettings | None = None, *, status: dg.DefaultSensorStatus | None = None
) -> dg.SensorDefinition:
    """The ``incoming_images_sensor`` definition.

    Parameters
    ----------
    settings : SensorSettings, optional
        Default: :meth:`SensorSettings.from_env`.
    status : DefaultSensorStatus, optional
        Default: :func:`assets.automation.default_status` (RUNNING).
    """
    settings = settings or SensorSettings.from_env()

    @dg.sensor(
        name=SENSOR_NAME,
        job=segment_images,
        minimum_interval_seconds=settings.interval_seconds,
        default_status=status if status is not None else default_status(),
        description="Adds a partition and requests a segment_images run for every new or "
        "changed image in the incoming folder; removes the partitions of deleted images "
        "(their outputs go to the store's trash/).",
    )
    def incoming_images_sensor(
        context: dg.SensorEvaluationContext, storage: KsegStorage
    ) -> dg.SensorResult:
        result, _ = evaluate_incoming(context, storage, settings)
        return result

    return incoming_images_sensor


#: The code location's sensor (settings from the environment).
incoming_images_sensor = build_incoming_images_sensor()
