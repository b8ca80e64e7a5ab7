"""A real ``dagster dev`` (webserver + daemon) for end-to-end tests.

:class:`DagsterDev` starts ``dagster dev -w workspace.yaml`` from the repository
root on a free port, with its own temporary ``DAGSTER_HOME`` (telemetry off),
incoming folder and storage root, waits until ``/server_info`` answers, and stops
the whole process group on exit (SIGTERM, then SIGKILL after a grace period), so no
process is left behind even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from assets.instance import instance_yaml, open_instance

REPO = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).with_name("dagster")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DagsterDev:
    """Context manager around a ``dagster dev`` process group.

    Parameters
    ----------
    workdir : Path
        Holds ``home/`` (DAGSTER_HOME), ``incoming/``, ``store/`` and ``dagster.log``.
    env : dict, optional
        Extra environment variables.
    startup_timeout : float
        Seconds to wait for ``/server_info``.
    nux : bool
        Leave Dagster's first-visit community pop-up on (off by default).
    image_runs : int, optional
        The instance's memory budget in runs of per-image steps (default: this
        machine's, as ``kseg run`` writes it).
    dequeue_seconds : int, optional
        How often the run queue is checked (kseg's instance: every second).
    prepared : bool
        Open the instance with kseg first, as ``kseg ui`` does before it starts
        ``dagster dev`` (False: ``dagster dev`` on the bare configuration).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        startup_timeout: float = 120,
        nux: bool = False,
        image_runs: int | None = None,
        dequeue_seconds: int | None = None,
        prepared: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.home = self.workdir / "home"
        self.incoming = self.workdir / "incoming"
        self.store = self.workdir / "store"
        self.log_path = self.workdir / "dagster.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.startup_timeout = startup_timeout
        self.nux = nux
        self.image_runs = image_runs
        self.dequeue_seconds = dequeue_seconds
        self.prepared = prepared
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DagsterDev:
        for folder in (self.home, self.incoming, self.store):
            folder.mkdir(parents=True, exist_ok=True)
        # The instance `kseg run` creates (Dagster's stock SQLite storage, telemetry off),
        # so the UI is tested on the configuration users open it on.
        config = instance_yaml(self.home, image_runs=self.image_runs)
        if self.nux:
            config = config.replace("nux:\n  enabled: false\n", "")
        if self.dequeue_seconds is not None:
            interval = f"dequeue_interval_seconds: {self.dequeue_seconds}"
            config = config.replace("dequeue_interval_seconds: 1", interval)
        (self.home / "dagster.yaml").write_text(config)
        if self.prepared:
            open_instance(self.home).dispose()
        env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "KSEG_INCOMING_DIR": str(self.incoming),
            "KSEG_STORE_ROOT": str(self.store),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(DAGSTER), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so we can stop all of it
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited early:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as resp,
            ):
                if resp.status == 200:
                    return
            time.sleep(0.5)
        raise TimeoutError(
            f"dagster dev not ready after {self.startup_timeout}s:\n{self.log_tail()}"
        )

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Children that outlived the parent (webserver, daemon, code servers).
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if hasattr(self, "_log"):
            self._log.close()

    def log_tail(self, n: int = 60) -> str:
        """The last ``n`` lines dagster dev printed."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST a GraphQL query; return ``data`` (raises on GraphQL errors)."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = json.loads(resp.read())
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def wait_for(
        self, predicate: Any, *, timeout: float, interval: float = 2.0, what: str = ""
    ) -> Any:
        """Poll ``predicate()`` until it returns something truthy; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise TimeoutError(
            f"timed out after {timeout}s waiting for {what}; last={last!r}\n{self.log_tail()}"
        )
