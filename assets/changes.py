"""Has this image changed? The one answer, used by the sensor, the schedule and ``kseg run``.

:func:`survey` looks at the incoming folder and compares it with what Dagster last
recorded (:mod:`assets.observations`), in named phases:

1. **scan**: which files are images, and their partition keys;
2. **look**: ``stat`` each one; a file whose size and modification time are those of
   its latest ``source_image`` observation keeps that observation's SHA-256, unread;
3. **hash**: the others are read and hashed (at most ``max_files`` per survey and
   within ``time_budget`` seconds; the rest wait); a file modified less than
   ``settle_seconds`` ago, or changed while it was read, waits for a later look;
4. **settings**: every image's effective settings (:mod:`assets.settings`) and their
   version;
5. **observe**: an observation for every file whose SHA-256, size or time differs from
   the latest recorded one, and for every image whose settings' version differs;
6. **deleted**: registered partitions whose file is gone.

:func:`plan` then says, from the store alone, which images' outputs are missing,
stale (made from other bytes, settings or code) or damaged: the schedule and
``kseg run`` materialise those. The sensor needs no plan: the observations it records
are what automation reacts to.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from upath import UPath

from .dagster_gaps import observation
from .incoming import (
    DEFAULT_MAX_FILE_BYTES,
    IncomingImage,
    Look,
    Scan,
    look,
    not_a_file,
    sha256_file,
    too_large,
)
from .names import IMAGE_ASSETS, PARTITIONS_NAME, SETTINGS, SOURCE
from .observations import LatestObservations, latest_observations
from .settings import ImageSettings, ProjectSettings
from .steps import chain_keys
from .storage import KsegStorage, Store

__all__ = [
    "FileState",
    "Plan",
    "Survey",
    "plan",
    "settings_observation",
    "survey",
]


@dataclass(frozen=True)
class FileState:
    """An image file as the survey found it.

    Attributes
    ----------
    key, relpath : str
    path : pathlib.Path or UPath
    size : int
    stamp : str
        Its modification time (local) or ETag (object store): see :class:`~assets.incoming.Look`.
    sha256 : str
    """

    key: str
    relpath: str
    path: Path | UPath
    size: int
    stamp: str
    sha256: str

    def metadata(self) -> dict[str, object]:
        """The observation metadata that lets a later look skip hashing this file."""
        return {"path": self.relpath, "bytes": self.size, "stamp": self.stamp}


@dataclass
class Survey:
    """What :func:`survey` found.

    Attributes
    ----------
    scan : Scan or None
        None if the incoming folder does not exist.
    registered : list of str
        The registered partitions, in Dagster's order.
    files : dict of str to FileState
        Every image file whose content is known now, by partition key.
    settings : dict of str to ImageSettings
        The effective settings of those images.
    new, changed, deleted : list of str
        Partitions to add; registered images whose bytes changed; registered
        partitions without a file.
    waiting : list of str
        Files still being written, or not hashed yet (over the survey's bounds).
    unreadable : list of str
        ``relpath (reason)`` of files that exist but cannot be read or used.
    events : list of AssetObservation
        The observations to record.
    hashed : int
        Files read and hashed.
    seconds : float
    """

    scan: Scan | None
    registered: list[str] = field(default_factory=list)
    files: dict[str, FileState] = field(default_factory=dict)
    settings: dict[str, ImageSettings] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    events: list[dg.AssetObservation] = field(default_factory=list)
    hashed: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for a tick's log."""
        images = len(self.scan.images) if self.scan is not None else 0
        return (
            f"{images} image file(s): {len(self.new)} new, {len(self.changed)} changed, "
            f"{len(self.deleted)} deleted, {len(self.waiting)} waiting, "
            f"{len(self.unreadable)} unreadable; {len(self.events)} observation(s), "
            f"{self.hashed} file(s) hashed in {self.seconds:.2f} s"
        )


def settings_observation(key: str, image: ImageSettings) -> dg.AssetObservation:
    """The observation of an image's effective settings."""
    metadata = {
        "settings": dg.MetadataValue.json(image.values),
        "own": ", ".join(sorted(image.own)) or "none",
    }
    return observation(SETTINGS, key, image.version, metadata)


def _known_sha(observed: LatestObservations, key: str, seen_now: Look) -> str | None:
    seen = observed.get(SOURCE, key)
    if seen is None:
        return None
    if seen.metadata.get("bytes") == seen_now.size and seen.metadata.get("stamp") == seen_now.stamp:
        return seen.version
    return None


def _hash_phase(
    result: Survey,
    images: Iterable[IncomingImage],
    observed: LatestObservations,
    *,
    settle_seconds: float,
    max_files: int,
    time_budget: float,
    clock: Callable[[], float],
    started: float,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> None:
    now = clock()
    for image in images:
        try:
            before = look(image.path)
        except OSError as exc:
            result.unreadable.append(f"{image.relpath} (cannot be read: {exc.strerror or exc})")
            continue
        if before is None:  # gone since the scan, or a FIFO, a device ...: never read
            special = not_a_file(image.path)
            if special:
                result.unreadable.append(f"{image.relpath} ({special})")
            continue
        refused = too_large(before.size, max_bytes)
        if refused:  # refused before reading (a sparse file of terabytes costs nothing)
            result.unreadable.append(f"{image.relpath} ({refused})")
            continue
        sha = _known_sha(observed, image.key, before)
        if sha is None:
            if now - before.modified < settle_seconds:
                result.waiting.append(image.key)  # still being written, maybe
                continue
            over = time.perf_counter() - started > time_budget
            if result.hashed >= max_files or over:
                result.waiting.append(image.key)
                continue
            try:
                result.hashed += 1
                sha = sha256_file(image.path, max_bytes=max_bytes)
                after = look(image.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                reason = exc.strerror or str(exc)
                result.unreadable.append(f"{image.relpath} (cannot be read: {reason})")
                continue
            except ValueError as exc:  # grew above the limit while read
                result.unreadable.append(f"{image.relpath} ({exc})")
                continue
            if after != before:  # changed while read: being written
                result.waiting.append(image.key)
                continue
        result.files[image.key] = FileState(
            image.key, image.relpath, image.path, before.size, before.stamp, sha
        )


def survey(
    storage: KsegStorage,
    instance: dg.DagsterInstance,
    project: ProjectSettings,
    *,
    settle_seconds: float = 0.0,
    max_files: int = 1 << 62,
    time_budget: float = float("inf"),
    clock: Callable[[], float] = time.time,
) -> Survey:
    """Compare the incoming folder with Dagster's records (see the module docstring).

    Parameters
    ----------
    storage : KsegStorage
    instance : DagsterInstance
    project : ProjectSettings
    settle_seconds : float
        A file modified less than this long ago waits for a later look.
    max_files : int
        Most files hashed.
    time_budget : float
        Seconds after which no more files are hashed.
    clock : callable
        Wall-clock time, compared with file modification times.

    Returns
    -------
    Survey
        ``scan`` is None if the incoming folder does not exist (then nothing else is
        filled in: a missing folder is a fault, not a deletion of every image).

    Raises
    ------
    KsegError
        If the store and the incoming folder overlap.
    """
    started = time.perf_counter()
    storage.check_layout()
    try:
        scan = storage.scan()
    except FileNotFoundError:
        return Survey(scan=None, seconds=time.perf_counter() - started)
    result = Survey(scan=scan)
    result.registered = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    registered = set(result.registered)
    observed = latest_observations(instance)

    # look and hash: new and changed files first, so a big backlog does not delay them
    order = sorted(scan.images, key=lambda image: image.key in registered)
    _hash_phase(
        result,
        order,
        observed,
        settle_seconds=settle_seconds,
        max_files=max_files,
        time_budget=time_budget,
        clock=clock,
        started=started,
        max_bytes=int(storage.max_file_bytes),
    )

    # settings
    result.settings, errors = project.for_images(storage.store(), result.files)
    for key, message in errors.items():
        state = result.files.pop(key)
        result.unreadable.append(f"{state.relpath} ({message})")

    # observe
    for key, state in result.files.items():
        seen = observed.get(SOURCE, key)
        if key not in registered:
            result.new.append(key)
        elif seen is not None and seen.version != state.sha256:
            result.changed.append(key)
        if _known_sha(observed, key, Look(state.size, state.stamp, 0.0)) != state.sha256:
            result.events.append(observation(SOURCE, key, state.sha256, state.metadata()))
        image = result.settings[key]
        seen_settings = observed.get(SETTINGS, key)
        if seen_settings is None or seen_settings.version != image.version:
            result.events.append(settings_observation(key, image))

    # deleted: registered, and no file at all (a file that exists but is unreadable, or
    # still settling, is not deleted)
    present = {image.key for image in scan.images}
    result.deleted = [key for key in result.registered if key not in present]
    result.seconds = time.perf_counter() - started
    return result


@dataclass
class Plan:
    """Which images' outputs need work, from the store alone.

    Attributes
    ----------
    missing : list of str
        Images with no stored output at all.
    stale : dict of str to str
        Images with some output missing, stale or damaged: the first such step.
    fresh : list of str
    """

    missing: list[str] = field(default_factory=list)
    stale: dict[str, str] = field(default_factory=dict)
    fresh: list[str] = field(default_factory=list)

    @property
    def wanted(self) -> list[str]:
        """The images to materialise (missing, then stale)."""
        return [*self.missing, *self.stale]


def plan(result: Survey, store: Store, *, verify: bool = True) -> Plan:
    """Compare each surveyed image's expected cache keys with the stored outputs.

    Parameters
    ----------
    result : Survey
    store : Store
    verify : bool
        Check every stored file's SHA-256 (else only its presence and size, which is
        what a bounded schedule tick can afford; every reuse in a run checks the SHA-256).

    Returns
    -------
    Plan
    """
    out = Plan()
    for key, state in result.files.items():
        image = result.settings[key]
        expected = chain_keys(state.sha256, image.settings, image.regions)
        found_any = False
        stale = None
        for asset in IMAGE_ASSETS:
            manifest = store.manifest(key, asset)
            found_any = found_any or manifest is not None
            if manifest is None or manifest.cache_key != expected[asset]:
                stale = stale or asset
                continue
            intact = store.verify(manifest) if verify else store.present(manifest)
            if stale is None and not intact:
                stale = asset
        if not found_any:
            out.missing.append(key)
        elif stale is not None:
            out.stale[key] = stale
        else:
            out.fresh.append(key)
    return out
