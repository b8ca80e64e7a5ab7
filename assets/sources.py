"""The two observed sources of every image: its file and its effective settings.

``source_image``'s data version is the SHA-256 of the file's bytes; ``image_settings``'s
is the version of the image's effective settings (:func:`assets.settings.settings_version`).
The sensor records their observations as it sees files and settings change
(:mod:`assets.changes`); observing them from the UI records them for the selected
images now. Either way automation re-materialises what depends on a new version.
"""

import warnings

import dagster as dg

from pipeline.errors import KsegError

from .changes import FileState, settings_observation
from .dagster_gaps import observation
from .incoming import look, sha256_file
from .names import GROUP_IMAGES, SETTINGS, SOURCE
from .partitions import IMAGES
from .settings import ProjectSettings
from .storage import KsegStorage

__all__ = ["observe_sources"]

_SPECS = [
    dg.AssetSpec(
        SOURCE,
        description="An image file in the incoming folder, one partition per file; its data "
        "version is the SHA-256 of its bytes, so a replaced file shows what was made from it "
        "as unsynced.",
        group_name=GROUP_IMAGES,
        kinds={"file"},
        partitions_def=IMAGES,
        skippable=True,
    ),
    dg.AssetSpec(
        SETTINGS,
        description="The settings an image is segmented with: the project's, overridden by the "
        "image's own (set with the set_image_settings job). Its data version changes exactly "
        "when they do, so the steps that read them show as unsynced.",
        group_name=GROUP_IMAGES,
        kinds={"json"},
        partitions_def=IMAGES,
        skippable=True,
    ),
]

with warnings.catch_warnings():
    # multi_observable_source_asset is beta in Dagster 1.13 (pinned). Unlike
    # @observable_source_asset (a SourceAsset, deprecated on load), it gives full AssetSpecs.
    warnings.simplefilter("ignore", dg.BetaWarning)

    @dg.multi_observable_source_asset(
        name="observe_sources", specs=_SPECS, partitions_def=IMAGES, can_subset=True
    )
    def observe_sources(
        context: dg.AssetExecutionContext,
        storage: KsegStorage,
        settings: dg.ResourceParam[ProjectSettings],
    ):
        """Hash the selected images' files and record them and their settings now."""
        found = storage.scan().by_key()
        store = storage.store()
        selected = {key.path[-1] for key in context.selected_asset_keys}
        for key in context.partition_keys:
            image = found.get(key)
            if image is None:
                context.log.warning(f"{key}: no such image in {storage.incoming()}")
                continue
            try:
                seen = look(image.path)
                if seen is None:
                    raise FileNotFoundError(str(image.path))
                sha = sha256_file(image.path)
                state = FileState(key, image.relpath, image.path, seen.size, seen.stamp, sha)
                effective = settings.for_image(store, key)
            except (OSError, KsegError) as exc:  # one bad image must not stop the others
                context.log.warning(f"{key}: not observed ({exc})")
                continue
            if SOURCE in selected:
                yield observation(SOURCE, key, state.sha256, state.metadata())
            if SETTINGS in selected:
                yield settings_observation(key, effective)
