"""``kseg settings``: show or change images' own settings from the command line."""

import argparse
import os
import sys
from typing import TextIO

from pipeline.errors import KsegError

from .changes import settings_observation
from .incoming import is_valid_partition_key, partition_key_for
from .instance import open_instance
from .names import PARTITIONS_NAME
from .settings import ProjectSettings, update_own_settings
from .storage import DEFAULT_INCOMING, DEFAULT_STORE, INCOMING_ENV, STORE_ENV, KsegStorage

__all__ = ["settings_command"]

_FIELDS = {
    "k_min": "k_min",
    "k_max": "k_max",
    "spatial_weight": "spatial_weight",
    "seed": "seed",
    "min_strength": "min_strength",
    "variance_target": "variance_target",
    "features": "features",
    "fallback": "fallback",
    "max_cost": "max_cost",
    "min_share": "min_share",
    "stop_strength": "stop_strength",
    "gap_span": "gap_span",
    "min_regions": "min_regions",
    "max_regions": "max_regions",
    "stop_fallback": "stop_fallback",
    "region_source": "region_source",
}


def _key(image: str, root: str) -> str:
    if is_valid_partition_key(image) and not os.path.exists(os.path.join(root, image)):
        return image
    relpath = os.path.relpath(os.path.abspath(image), root) if os.path.isabs(image) else image
    return partition_key_for(relpath)


def settings_command(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Implement ``kseg settings``; returns the exit status (0 ok, 1 unknown image, 2 invalid)."""
    out = out or sys.stdout
    err = err or sys.stderr
    storage = KsegStorage(
        incoming_dir=args.incoming or os.environ.get(INCOMING_ENV) or DEFAULT_INCOMING,
        store_root=os.environ.get(STORE_ENV) or DEFAULT_STORE,
    )
    changes = {field: getattr(args, name) for name, field in _FIELDS.items()}
    if args.k is not None:
        try:
            changes["k_override"] = int(args.k)
        except ValueError:
            print(f"kseg settings: error: --k must be an integer, got {args.k!r}", file=err)
            return 2
    changes = {name: value for name, value in changes.items() if value is not None}
    if args.n_regions is not None:
        if args.n_regions.strip().lower() == "auto":
            args.forget = [*args.forget, "n_regions"]
        else:
            try:
                changes["n_regions"] = int(args.n_regions)
            except ValueError:
                print(
                    f"kseg settings: error: --regions must be an integer or 'auto', "
                    f"got {args.n_regions!r}",
                    file=err,
                )
                return 2
    forget = ["k_override" if name == "k" else name for name in args.forget]
    try:
        project = ProjectSettings.from_env()
        keys = [_key(image, str(storage.incoming())) for image in args.images]
    except (KsegError, ValueError) as exc:
        print(f"kseg settings: error: {exc}", file=err)
        return 2
    instance = open_instance()
    try:
        unknown = [k for k in keys if not instance.has_dynamic_partition(PARTITIONS_NAME, k)]
        if unknown:
            print(f"kseg settings: error: no such image(s): {', '.join(unknown)}", file=err)
            return 1
        store = storage.store()
        try:
            if changes or forget:
                images = update_own_settings(
                    store, project, keys, changes, forget, updated_by="kseg settings"
                )
                for key, image in images.items():
                    instance.report_runless_asset_event(settings_observation(key, image))
            else:
                images = {key: project.for_image(store, key) for key in keys}
        except KsegError as exc:
            print(f"kseg settings: error: {exc}", file=err)
            return 2
    finally:
        instance.dispose()
    for key, image in images.items():
        own = ", ".join(f"{k}={v}" for k, v in sorted(image.own.items())) or "none"
        print(f"{key}: own settings: {own}; version {image.version}", file=out)
    return 0
