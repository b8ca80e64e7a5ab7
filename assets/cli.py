"""The ``kseg`` command.

``kseg segment`` runs the engine alone; ``kseg run`` drives the Dagster pipeline.
Only ``argparse`` is imported up front: each sub-command imports what it needs, so
``kseg segment`` never pays for importing Dagster.
"""

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from pipeline.cli import add_segment_arguments

    parser = argparse.ArgumentParser(
        prog="kseg", description="Segment images by K-means clustering of their pixels."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    seg = sub.add_parser(
        "segment", help="segment image files with the engine alone (no Dagster)",
        description="Sweep K, choose K at the elbow of the WCSS curve, and segment each image.",
    )  # fmt: skip
    add_segment_arguments(seg)
    samples = sub.add_parser(
        "samples", help="write sample photos (scikit-image's bundled data) into a folder",
    )  # fmt: skip
    samples.add_argument(
        "dest",
        nargs="?",
        default=None,
        metavar="DIR",
        help="folder to write into (default: $KSEG_INCOMING_DIR or data/incoming)",
    )
    run = sub.add_parser(
        "run", help="register an incoming folder's images and materialise them through Dagster",
        description="Register every image of the incoming folder as a partition and "
        "materialise the new and stale ones through Dagster, recording runs in the "
        "project's Dagster instance.",
    )  # fmt: skip
    run.add_argument(
        "--incoming",
        default=None,
        metavar="DIR",
        help="incoming folder (default: $KSEG_INCOMING_DIR or data/incoming)",
    )
    run.add_argument(
        "--all",
        action="store_true",
        dest="all_",
        help="materialise every image (unchanged steps are cache hits)",
    )
    run.add_argument(
        "--submit",
        action="store_true",
        help="enqueue the runs in the run queue of a Dagster deployment (its webserver, "
        "--webserver) instead of running them here",
    )
    run.add_argument(
        "--webserver",
        default=None,
        metavar="URL",
        help="with --submit: the webserver (default: $KSEG_WEBSERVER_URL or http://127.0.0.1:3000)",
    )
    settings = sub.add_parser(
        "settings", help="show or change images' own settings (they override the project's)",
        description="Show or change the own settings of images (partition keys, or paths "
        "relative to the incoming folder). They are kept until changed again; the images are "
        "re-segmented by automation (or the next kseg run). Without a change, prints the "
        "images' effective settings. An option left out keeps the image's current value.",
    )  # fmt: skip
    settings.add_argument("images", nargs="+", metavar="IMAGE", help="partition key or path")
    settings.add_argument("--k", default=None, metavar="N", help="a fixed K for these images")
    for name, kind, meaning in (
        ("k-min", int, "smallest K that may be chosen"),
        ("k-max", int, "largest K tried and allowed"),
        ("spatial-weight", float, "weight of pixel position next to colour (0 = colour only)"),
        ("seed", int, "seed of every random choice (0 to 2**32-1)"),
        ("min-strength", float, "knee strength (0-1) an elbow needs to count as clear"),
        ("variance-target", float, "explained-variance share of the variance fallback"),
    ):  # fmt: skip
        settings.add_argument(f"--{name}", type=kind, default=None, help=meaning)
    settings.add_argument(
        "--features", choices=("lab", "rgb", "hsv"), default=None, help="colour space"
    )
    settings.add_argument(
        "--fallback", choices=("variance", "knee"), default=None,
        help="rule when there is no clear elbow",
    )  # fmt: skip
    regions = settings.add_argument_group("regions (as kseg segment's options)")
    regions.add_argument(
        "--regions", dest="n_regions", default=None, metavar="N|auto",
        help="a fixed number of regions ('auto': back to the merge curve's stop)",
    )  # fmt: skip
    for name, kind, meaning in (
        ("max-cost", float, "merge while a merge adds at most this per pixel (Lab, squared)"),
        ("min-share", float, "size floor of a region, as a share of the image"),
        ("stop-strength", float, "strength (0-1) a stop needs to count as clear"),
        ("gap-span", float, "how far the gap fallback looks around the threshold's count"),
        ("min-regions", int, "fewest regions the stop may keep"),
        ("max-regions", int, "most regions the stop may keep"),
    ):  # fmt: skip
        regions.add_argument(f"--{name}", type=kind, default=None, help=meaning)
    regions.add_argument(
        "--stop-fallback", choices=("gap", "threshold"), default=None,
        help="rule when the merge curve has no clear stop",
    )  # fmt: skip
    regions.add_argument(
        "--region-source", choices=("chosen", "finest"), default=None,
        help="clustering the regions start from",
    )  # fmt: skip
    settings.add_argument(
        "--forget",
        nargs="+",
        default=[],
        metavar="NAME",
        help="own settings to drop, back to the project's (k, k_min, n_regions, ..., or all)",
    )
    settings.add_argument(
        "--incoming",
        default=None,
        metavar="DIR",
        help="incoming folder (default: $KSEG_INCOMING_DIR or data/incoming)",
    )
    deploy = sub.add_parser(
        "deploy", help="start, stop or show the local distributed stack (deploy/README.md)",
        description="The distributed profile on this machine, on 127.0.0.1 only: Postgres, "
        "Redis, a SeaweedFS S3 server, Celery workers, the Dagster daemon and webserver, each "
        "with its own data folder under the stack folder.",
    )  # fmt: skip
    deploy.add_argument("action", choices=("up", "down", "status"))
    deploy.add_argument(
        "--folder",
        default=None,
        metavar="DIR",
        help="the stack's folder (default: $KSEG_STACK_DIR or /var/tmp/kseg-stack); it must be "
        "reachable by the postgres account when run as root",
    )
    deploy.add_argument("--workers", type=int, default=2, help="Celery workers (default 2)")
    ui = sub.add_parser(
        "ui", help="open the Dagster UI (`dg dev`) on the project's instance",
        description="Run `dg dev` (Dagster's webserver and daemon) with DAGSTER_HOME set to "
        "the instance `kseg run` records into, so its runs, lineage and metadata show.",
    )  # fmt: skip
    ui.add_argument("--port", type=int, default=3000, help="port of the web UI (default 3000)")
    return parser


def _ui(port: int) -> int:
    import os
    import shutil

    from assets.instance import open_instance, project_home
    from assets.storage import PROJECT_ROOT

    home = project_home()
    open_instance(home).dispose()  # creates the folder and its dagster.yaml on first use
    venv = os.path.dirname(sys.executable)
    dg = shutil.which("dg", path=venv) or "dg"
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["VIRTUAL_ENV"] = os.path.dirname(venv)  # dg runs the project in this venv
    os.environ["PATH"] = venv + os.pathsep + os.environ.get("PATH", "")
    os.chdir(PROJECT_ROOT)
    print(f"kseg ui: opening the Dagster UI on http://127.0.0.1:{port} (instance {home})")
    os.execv(dg, [dg, "dev", "-h", "127.0.0.1", "-p", str(port)])
    return 0  # not reached: execv replaces this process


def _deploy(action: str, folder: str | None, workers: int) -> int:
    import os

    from assets import deploy

    where = folder or os.environ.get("KSEG_STACK_DIR") or "/var/tmp/kseg-stack"
    try:
        if action == "up":
            stack = deploy.up(where, workers=workers)
            print(f"kseg deploy: the stack is up in {stack.folder}; UI on {stack.url}")
            print(f"kseg deploy: for clients: set -a; . {stack.folder / 'stack.env'}; set +a")
        elif action == "down":
            stopped = deploy.down(where)
            print(f"kseg deploy: stopped {', '.join(stopped) or 'nothing (it was not running)'}")
        else:
            report = deploy.status(where)
            for service in report:
                print(service)
            if not report:
                print(f"kseg deploy: no stack runs in {where}")
            return 0 if report and all(service.answering for service in report) else 1
    except deploy.DeployError as exc:
        print(f"kseg deploy: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kseg`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "segment":
        from pipeline.cli import segment_command

        return segment_command(args)
    if args.command == "samples":
        import os

        from pipeline.samples import write_samples

        dest = args.dest or os.environ.get("KSEG_INCOMING_DIR") or "data/incoming"
        try:
            for path in write_samples(dest):
                print(path)
        except OSError as exc:
            where = exc.filename or dest
            print(f"kseg samples: error: cannot write to {where}: {exc.strerror or exc}",
                  file=sys.stderr)  # fmt: skip
            return 1
        return 0
    if args.command == "deploy":
        return _deploy(args.action, args.folder, args.workers)
    if args.command == "ui":
        return _ui(args.port)
    if args.command == "settings":
        from assets.settings_command import settings_command

        return settings_command(args)
    from assets.run import run_command

    return run_command(
        incoming=args.incoming, all_=args.all_, submit=args.submit, webserver=args.webserver
    )


if __name__ == "__main__":
    sys.exit(main())
