"""Segmentation settings: the project's, each image's own, and the effective ones.

One source of truth, read the same way by the sensor, the schedule, automation, the
UI's runs and ``kseg run``. For each image the effective settings are, field by
field, the first of:

1. **the image's own settings**: a small JSON document in the store
   (``settings/<partition key>.json``), set with the ``set_image_settings`` job (from
   the UI, validated at launch) or ``kseg settings``; nothing else writes it, so no
   sweep, sensor or automation reverts it;
2. **the project settings**: given to :func:`assets.definitions.build_defs`
   (``settings=``), else the ``KSEG_*`` environment variables of :data:`ENV_VARS`,
   read and validated when the code location loads, else kseg's defaults.

The effective settings of an image are observed as the data version of its
``image_settings`` partition (:func:`settings_version`), so a change of either kind
marks exactly the images whose effective settings changed as unsynced, and
automation re-materialises just those.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import KsegError, SettingsError
from pipeline.settings import MAX_REGIONS, RegionSettings, SegmentSettings

from .storage import Store, StoreError

__all__ = [
    "ENV_VARS",
    "REGION_ENV_VARS",
    "REGION_FIELDS",
    "SETTING_NAMES",
    "ImageSettings",
    "ProjectSettings",
    "apply_changes",
    "change_problems",
    "own_settings_document",
    "parse_own_settings",
    "project_settings_from_env",
    "region_settings_from_env",
    "settings_version",
    "update_own_settings",
]

#: Environment variable of each project setting (``KSEG_K``: a fixed K for every image).
ENV_VARS = {
    "k_min": "KSEG_K_MIN",
    "k_max": "KSEG_K_MAX",
    "features": "KSEG_FEATURES",
    "spatial_weight": "KSEG_SPATIAL_WEIGHT",
    "seed": "KSEG_SEED",
    "k_override": "KSEG_K",
    "min_strength": "KSEG_MIN_STRENGTH",
    "fallback": "KSEG_FALLBACK",
    "variance_target": "KSEG_VARIANCE_TARGET",
}

#: The region settings (:class:`~pipeline.settings.RegionSettings`) as this layer names
#: them: ``kseg segment``'s option names, since two of their fields (``min_strength``,
#: ``fallback``) share a name with a segmentation setting. Regions are always made here
#: (``enabled`` is ``kseg segment --no-regions`` only).
REGION_FIELDS = {
    "region_source": "source",
    "min_share": "min_share",
    "max_cost": "max_cost",
    "stop_strength": "min_strength",
    "stop_fallback": "fallback",
    "gap_span": "gap_span",
    "min_regions": "min_regions",
    "max_regions": "max_regions",
    "n_regions": "n_regions",
}
#: Environment variable of each project region setting (``KSEG_REGIONS``: a fixed count).
REGION_ENV_VARS = {
    "region_source": "KSEG_REGION_SOURCE",
    "min_share": "KSEG_MIN_SHARE",
    "max_cost": "KSEG_MAX_COST",
    "stop_strength": "KSEG_STOP_STRENGTH",
    "stop_fallback": "KSEG_STOP_FALLBACK",
    "gap_span": "KSEG_GAP_SPAN",
    "min_regions": "KSEG_MIN_REGIONS",
    "max_regions": "KSEG_MAX_REGIONS",
    "n_regions": "KSEG_REGIONS",
}

_SEGMENT_FIELDS = tuple(f.name for f in dataclasses.fields(SegmentSettings))
#: Every setting an image (or the project) can set: the segmentation's, then the regions'.
SETTING_NAMES = (*_SEGMENT_FIELDS, *REGION_FIELDS)
_FIELDS = SETTING_NAMES
_OPTIONAL = {"k_override", "n_regions"}
_INTEGERS = {"k_min", "k_max", "seed", "k_override", "min_regions", "max_regions", "n_regions"}
_NUMBERS = {
    "spatial_weight", "min_strength", "variance_target", "min_share", "max_cost",
    "stop_strength", "gap_span",
}  # fmt: skip
_DOCUMENT_VERSION = 1


def _parse_env_value(name: str, raw: str) -> Any:
    text = raw.strip()
    if name in _OPTIONAL and text.lower() in ("", "auto"):
        return None
    if name in _INTEGERS:
        try:
            return int(text)
        except ValueError:
            raise SettingsError(name, f"must be an integer, got {raw!r}") from None
    if name in _NUMBERS:
        try:
            return float(text)
        except ValueError:
            raise SettingsError(name, f"must be a number, got {raw!r}") from None
    return text


def split_values(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat setting values as (``SegmentSettings`` fields, ``RegionSettings`` fields)."""
    segment = {name: value for name, value in values.items() if name not in REGION_FIELDS}
    regions = {REGION_FIELDS[n]: value for n, value in values.items() if n in REGION_FIELDS}
    return segment, regions


def flat_values(settings: SegmentSettings, regions: RegionSettings) -> dict[str, Any]:
    """Every setting under this layer's names (:data:`SETTING_NAMES`), in that order."""
    values = settings.to_dict()
    values.update({name: getattr(regions, field) for name, field in REGION_FIELDS.items()})
    return values


def _renamed(problem: SettingsError) -> SettingsError:
    """A :class:`RegionSettings` problem under this layer's name for the field."""
    names = {field: name for name, field in REGION_FIELDS.items()}
    return SettingsError(names.get(problem.field, problem.field), problem.message)


def _all_problems(settings: SegmentSettings, regions: RegionSettings) -> list[SettingsError]:
    return [*settings.problems(), *(_renamed(p) for p in regions.problems())]


def _from_env(environ: Mapping[str, str] | None) -> tuple[SegmentSettings, RegionSettings]:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[SettingsError] = []
    for name, variable in {**ENV_VARS, **REGION_ENV_VARS}.items():
        raw = env.get(variable)
        if raw is None or (raw.strip() == "" and name not in _OPTIONAL):
            continue
        try:
            values[name] = _parse_env_value(name, raw)
        except SettingsError as exc:
            problems.append(exc)
    segment, region = split_values(values)
    settings, regions = SegmentSettings(**segment), RegionSettings(**region)
    parsed = {p.field for p in problems}
    problems += [p for p in _all_problems(settings, regions) if p.field not in parsed]
    if problems:
        variables = {**ENV_VARS, **REGION_ENV_VARS}
        renamed = [
            SettingsError(f"{variables[p.field]} ({p.field})", p.message)
            for p in sorted(problems, key=lambda p: _FIELDS.index(p.field))
        ]
        raise SettingsError(renamed[0].field, renamed[0].message, renamed[1:])
    return settings, regions


def project_settings_from_env(environ: Mapping[str, str] | None = None) -> SegmentSettings:
    """The project settings from the ``KSEG_*`` environment variables (unset: default).

    Raises
    ------
    SettingsError
        Naming every invalid variable at once (``KSEG_K_MAX=1: must be ...``), region
        variables (:data:`REGION_ENV_VARS`) included.
    """
    return _from_env(environ)[0]


def region_settings_from_env(environ: Mapping[str, str] | None = None) -> RegionSettings:
    """The project's region settings from :data:`REGION_ENV_VARS` (unset: default).

    Raises
    ------
    SettingsError
        As :func:`project_settings_from_env`.
    """
    return _from_env(environ)[1]


def settings_version(settings: SegmentSettings, regions: RegionSettings | None = None) -> str:
    """The data version of an image's effective settings: 16 hex digits of their hash."""
    values = flat_values(settings, RegionSettings() if regions is None else regions)
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def parse_own_settings(document: bytes, *, where: str) -> dict[str, Any]:
    """The field values of an image's own settings document.

    Raises
    ------
    KsegError
        If the document is not a kseg settings document or names unknown fields.
    """
    try:
        data = json.loads(document)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KsegError(f"{where}: not a JSON settings document ({exc})") from exc
    if not isinstance(data, dict) or data.get("kseg_image_settings") != _DOCUMENT_VERSION:
        raise KsegError(f"{where}: not a kseg image settings document (version 1)")
    values = data.get("settings")
    if not isinstance(values, dict):
        raise KsegError(f"{where}: 'settings' must be an object of setting names to values")
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise KsegError(f"{where}: unknown settings {unknown}; known ones are {list(_FIELDS)}")
    return dict(values)


def own_settings_document(values: Mapping[str, Any], *, updated_by: str) -> bytes:
    """The JSON document that stores an image's own settings."""
    document = {
        "kseg_image_settings": _DOCUMENT_VERSION,
        "settings": {name: values[name] for name in _FIELDS if name in values},
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "updated_by": updated_by,
    }
    return json.dumps(document, indent=1, allow_nan=False).encode("utf-8")


def apply_changes(
    own: Mapping[str, Any], changes: Mapping[str, Any], forget: Iterable[str] = ()
) -> dict[str, Any]:
    """An image's own settings after dropping ``forget`` and setting ``changes``."""
    result = {name: value for name, value in own.items() if name not in set(forget)}
    result.update(changes)
    return result


@dataclass(frozen=True)
class ImageSettings:
    """The effective settings of one image and where they came from.

    Attributes
    ----------
    settings : SegmentSettings
        Validated effective settings.
    own : dict
        The image's own values (empty if it has none), under :data:`SETTING_NAMES`.
    version : str
        :func:`settings_version` of ``settings`` and ``regions``.
    regions : RegionSettings
        Validated effective region settings.
    """

    settings: SegmentSettings
    own: dict[str, Any]
    version: str
    regions: RegionSettings = dataclasses.field(default_factory=RegionSettings)

    @property
    def values(self) -> dict[str, Any]:
        """Every effective setting under :data:`SETTING_NAMES` (what keys step caches)."""
        return flat_values(self.settings, self.regions)


@dataclass(frozen=True)
class ProjectSettings:
    """The project-wide settings, and the effective settings of any image.

    This is the value of the code location's ``settings`` resource. Deliberately a
    resource without run config: a setting typed into a launchpad would apply to one
    run only and be reverted by the next automatic run (or, since Dagster checks only
    a config's types at launch, fail inside the run). An image's own settings are set
    with the ``set_image_settings`` job instead, whose every field is checked before
    a run exists.

    Attributes
    ----------
    defaults : SegmentSettings
        The validated project settings.
    source : str
        Where they came from (for the UI): ``definitions``, ``environment`` or ``defaults``.
    regions : RegionSettings
        The validated project region settings.
    """

    defaults: SegmentSettings
    source: str = "defaults"
    regions: RegionSettings = dataclasses.field(default_factory=RegionSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProjectSettings:
        """The project settings from the environment (see :data:`ENV_VARS`)."""
        env = os.environ if environ is None else environ
        variables = (*ENV_VARS.values(), *REGION_ENV_VARS.values())
        used = any(variable in env for variable in variables)
        settings, regions = _from_env(env)
        return cls(settings, "environment" if used else "defaults", regions)

    def effective(self, own: Mapping[str, Any], *, where: str) -> ImageSettings:
        """The effective settings for an image whose own values are ``own``.

        Raises
        ------
        KsegError
            If the combination is invalid (e.g. an own ``k_min`` above the project's
            ``k_max``), naming ``where`` and every bad field.
        """
        segment, region = split_values(own)
        settings = dataclasses.replace(self.defaults, **segment)
        regions = dataclasses.replace(self.regions, **region)
        problems = _all_problems(settings, regions)
        if problems:
            listed = "; ".join(f"{p.field!r}: {p.message}" for p in problems)
            raise KsegError(f"{where}: its own settings are invalid with the project's: {listed}")
        return ImageSettings(settings, dict(own), settings_version(settings, regions), regions)

    def own(self, store: Store, partition: str) -> dict[str, Any]:
        """The image's own values from the store (empty if it has none).

        Raises
        ------
        KsegError
            If its settings document is unreadable.
        """
        document = store.own_settings(partition)
        if document is None:
            return {}
        return parse_own_settings(document, where=f"{partition}: settings/{partition}.json")

    def for_image(self, store: Store, partition: str) -> ImageSettings:
        """The effective settings of one image.

        Raises
        ------
        KsegError
            If its own settings are unreadable or invalid with the project's.
        """
        try:
            own = self.own(store, partition)
        except StoreError as exc:
            raise KsegError(str(exc)) from exc
        return self.effective(own, where=partition)

    def for_images(
        self, store: Store, partitions: Iterable[str]
    ) -> tuple[dict[str, ImageSettings], dict[str, str]]:
        """The effective settings of many images (one listing of the settings folder).

        Returns
        -------
        settings : dict of str to ImageSettings
        errors : dict of str to str
            The images whose own settings are unusable, with the reason.
        """
        with_own = store.partitions_with_own_settings()
        default = None
        found: dict[str, ImageSettings] = {}
        errors: dict[str, str] = {}
        for partition in partitions:
            if partition not in with_own:
                default = default or self.effective({}, where="the project settings")
                found[partition] = default
                continue
            try:
                found[partition] = self.for_image(store, partition)
            except KsegError as exc:
                errors[partition] = str(exc)
        return found, errors

    def describe(self) -> str:
        """One line for the UI: the values and where they came from."""
        values = ", ".join(f"{k}={v}" for k, v in flat_values(self.defaults, self.regions).items())
        return f"Project-wide segmentation settings ({self.source}): {values}."


def change_problems(changes: Mapping[str, Any]) -> list[SettingsError]:
    """Every invalid value among ``changes`` (setting names to new values), at once.

    Each value is checked on its own (with kseg's defaults for the other fields), and
    ``k_min`` against ``k_max`` when both are given; how they combine with an image's
    other settings is checked when they are applied (:func:`update_own_settings`).
    """
    unknown = sorted(set(changes) - set(_FIELDS))
    problems = [
        SettingsError(name, f"unknown setting; known ones are {list(_FIELDS)}") for name in unknown
    ]
    known = {name: value for name, value in changes.items() if name in _FIELDS}
    segment, region = split_values(known)
    # Each value on its own: the other end of a range is left open unless also given.
    checked = SegmentSettings(**{"k_min": 1, "k_max": 64, **segment})
    regions = RegionSettings(**{"min_regions": 1, "max_regions": MAX_REGIONS, **region})
    problems += [p for p in _all_problems(checked, regions) if p.field in known]
    return problems


def update_own_settings(
    store: Store,
    project: ProjectSettings,
    partitions: Iterable[str],
    changes: Mapping[str, Any],
    forget: Iterable[str] = (),
    *,
    updated_by: str,
) -> dict[str, ImageSettings]:
    """Change some images' own settings: all of them, or (on any error) none.

    Parameters
    ----------
    store : Store
    project : ProjectSettings
    partitions : iterable of str
    changes : mapping
        Setting names to their new values.
    forget : iterable of str
        Own settings to drop first (``all`` drops every one), back to the project's.
    updated_by : str
        Recorded in the documents (e.g. the run that changed them).

    Returns
    -------
    dict of str to ImageSettings
        The images' new effective settings.

    Raises
    ------
    KsegError
        Naming every image whose settings would be invalid, and why; nothing is written.
    """
    problems = change_problems(changes)
    bad_forget = sorted(set(forget) - set(_FIELDS) - {"all"})
    if bad_forget:
        problems.append(SettingsError("forget", f"unknown settings {bad_forget}"))
    if problems:
        first = problems[0]
        raise SettingsError(first.field, first.message, problems[1:])
    dropped = set(_FIELDS) if "all" in set(forget) else set(forget)
    planned: dict[str, tuple[dict[str, Any], ImageSettings]] = {}
    errors = []
    for partition in partitions:
        try:
            own = apply_changes(project.own(store, partition), changes, dropped)
            planned[partition] = (own, project.effective(own, where=partition))
        except KsegError as exc:
            errors.append(str(exc))
    if errors:
        raise KsegError("; ".join(errors))
    for partition, (own, _) in planned.items():
        document = own_settings_document(own, updated_by=updated_by) if own else None
        store.save_own_settings(partition, document)
    return {partition: image for partition, (_, image) in planned.items()}
