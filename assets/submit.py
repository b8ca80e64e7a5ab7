"""``kseg run --submit``: register the images and enqueue their runs on a Dagster deployment.

The same survey and plan as ``kseg run`` (:mod:`assets.run`): the incoming folder's
images are registered as partitions of ``images`` in the instance of ``$DAGSTER_HOME``
(on the distributed profile, Postgres), and the new and stale ones are planned. Instead
of executing them in this process, each batch of up to ``$KSEG_BATCH_SIZE`` images
becomes one ``segment_images`` run submitted to the webserver (Dagster's public
``DagsterGraphQLClient.submit_job_execution``, as the UI's launch button does): it goes
into the instance's run queue, whose limits (one run per image at a time, as many runs
as worker slots) decide when a run launcher starts it on a worker. The command returns
once every run is queued, printing their IDs; the report follows by automation.
"""

import json
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping

from pipeline.errors import KsegError

from .automation import positive_int_env
from .names import BATCH_ENV, BATCH_SIZE, LAUNCHED_BY_TAG
from .partitions import batches, run_tags_for

__all__ = ["DEFAULT_WEBSERVER", "LOCATION_NAME", "WEBSERVER_ENV", "submit_runs", "webserver_url"]

#: The webserver that takes the runs (default http://127.0.0.1:3000).
WEBSERVER_ENV = "KSEG_WEBSERVER_URL"
DEFAULT_WEBSERVER = "http://127.0.0.1:3000"
#: kseg's code location, as ``workspace.yaml`` names it.
LOCATION_NAME = "kseg"
_JOB = "segment_images"


def _client(url: str):
    """A GraphQL client of the webserver at ``url``, once it answers ``/server_info``."""
    from dagster_graphql import DagsterGraphQLClient

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KsegError(f"{WEBSERVER_ENV}: {url!r} is not an http(s) URL of a Dagster webserver")
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/server_info", timeout=10) as response:
            json.loads(response.read())["dagster_webserver_version"]
    except (OSError, ValueError, KeyError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise KsegError(f"no Dagster webserver answers at {url} ({reason})") from exc
    return DagsterGraphQLClient(
        parts.hostname,
        port_number=parts.port,
        use_https=parts.scheme == "https",
        path_prefix=parts.path.rstrip("/"),
        timeout=60,
    )


def _one_line(exc: Exception) -> str:
    # The client's errors carry the query text and a body over many lines.
    text = " ".join(str(part) for part in (*exc.args, getattr(exc, "body", None) or ""))
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def webserver_url(environ: Mapping[str, str]) -> str:
    """``$KSEG_WEBSERVER_URL``, else :data:`DEFAULT_WEBSERVER`."""
    return environ.get(WEBSERVER_ENV) or DEFAULT_WEBSERVER


def submit_runs(
    order: list[str],
    keys: list[str],
    *,
    url: str | None = None,
    batch_size: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Submit one ``segment_images`` run per batch of ``keys``; their run IDs.

    Parameters
    ----------
    order : list of str
        Every registered partition key, in the instance's order (batches are ranges).
    keys : list of str
        The partitions to segment.
    url : str, optional
        The webserver (default ``$KSEG_WEBSERVER_URL``, else http://127.0.0.1:3000).
    batch_size : int, optional
        Images per run (default ``$KSEG_BATCH_SIZE``, else 50).

    Raises
    ------
    KsegError
        If no webserver answers at ``url`` or it refuses a run (the message says why).
    """
    from dagster_graphql import DagsterGraphQLClientError

    env = os.environ if environ is None else environ
    url = url or webserver_url(env)
    size = batch_size or positive_int_env(BATCH_ENV, BATCH_SIZE, dict(env))
    client = _client(url)
    runs = []
    for first, last in batches(order, set(keys), size):
        tags = {**run_tags_for(first, last), LAUNCHED_BY_TAG: "kseg-run-submit"}
        try:
            runs.append(
                client.submit_job_execution(_JOB, repository_location_name=LOCATION_NAME, tags=tags)
            )
        except DagsterGraphQLClientError as exc:
            where = first if first == last else f"{first}..{last}"
            raise KsegError(
                f"{where}: the webserver at {url} refused the run ({_one_line(exc)})"
            ) from exc
    return runs
