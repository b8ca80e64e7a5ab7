"""A child process for the SIGKILL and concurrency tests (run as a script, not collected).

``python robustness_child.py '<json>'`` registers the incoming folder's images in the
instance at ``home`` and materialises them with ``assets.run.materialise`` (the code
``kseg run`` uses), with test hooks around the store's file writes
(``assets.filesystems.LocalTree.write``) and its per-image lock (``Store.lock``):

* every write and lock event is appended to ``log`` as ``<pid> <event> <name>``;
* ``pause``: on writing file ``pause.file``, optionally first write half of it to a
  temporary file as the atomic writer would (``pause.half``), then create
  ``pause.marker`` and wait until ``pause.go`` exists (never, if not given): the parent
  SIGKILLs the process or lets it go on;
* ``config``: the project settings (fields of ``SegmentSettings``) its definitions use;
* ``start``: wait until this file exists before materialising (once imports are done).

The hooks only observe and delay: the product code paths are unchanged.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path


def _log(path: str | None, event: str, name: str) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {event} {name}\n")


def _wait_for(path: str | None) -> None:
    while path is None or not os.path.exists(path):
        time.sleep(0.01)


def main() -> int:
    args = json.loads(sys.argv[1])
    log = args.get("log")
    pause = args.get("pause") or {}

    import contextlib

    import assets.filesystems as filesystems
    import assets.storage as store_module

    write = filesystems.LocalTree.write  # every file of a local store is written here
    lock = store_module.Store.lock

    def hooked_write(self, parts, name, data):
        if name == pause.get("file"):
            if pause.get("half"):
                # What the atomic writer has on disk halfway: part of a temporary file.
                folder = Path(self.where(parts))
                tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
                with open(tmp, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
            _log(log, "paused", name)
            Path(pause["marker"]).write_text(str(os.getpid()))
            _wait_for(pause.get("go"))
        write(self, parts, name, data)
        _log(log, "wrote", name)

    def hooked_lock(self, partition, *a, **k):
        _log(log, "lock-wait", str(partition))
        with lock(self, partition, *a, **k):
            _log(log, "lock-held", str(partition))
            yield
            _log(log, "lock-release", str(partition))

    filesystems.LocalTree.write = hooked_write
    store_module.Store.lock = contextlib.contextmanager(hooked_lock)

    from assets.definitions import build_defs
    from assets.incoming import scan_incoming
    from assets.instance import open_instance
    from assets.names import PARTITIONS_NAME
    from assets.run import materialise
    from assets.settings import ProjectSettings
    from assets.storage import KsegStorage
    from pipeline.settings import SegmentSettings

    storage = KsegStorage(incoming_dir=args["incoming"], store_root=args["store"])
    settings = ProjectSettings(SegmentSettings(**(args.get("config") or {})), "definitions")
    defs = build_defs(storage, settings)
    instance = open_instance(args["home"])
    try:
        if args.get("start"):
            _wait_for(args["start"])
        keys = [image.key for image in scan_incoming(args["incoming"]).images]
        known = set(instance.get_dynamic_partitions(PARTITIONS_NAME))
        instance.add_dynamic_partitions(PARTITIONS_NAME, [k for k in keys if k not in known])
        runs, errors, checks = materialise(instance, defs, keys)
    finally:
        instance.dispose()
    print(json.dumps({"pid": os.getpid(), "runs": runs, "errors": errors, "checks": checks}))
    return 1 if errors or checks else 0


if __name__ == "__main__":
    sys.exit(main())
