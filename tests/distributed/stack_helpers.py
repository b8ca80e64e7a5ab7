"""What the distributed-stack tests share: the stack fixture's pieces and their probes.

Nothing here starts a service by itself; :func:`stack_up` starts one stack (kseg's
code location and the smoke location of ``stack_location.py``) and
:func:`stop_and_check` stops it and says what outlived it, killing that too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from assets import deploy

HERE = Path(__file__).resolve().parent
WORKSPACE = HERE / "workspace.yaml"
SERVICES = {"postgres", "redis", "s3", "worker-1", "worker-2", "daemon", "webserver"}
#: Longest wait (seconds) for runs to finish.
RUN_TIMEOUT = 300
_MISSING = deploy.missing()
#: Skip, saying what is missing, where the stack cannot start (no Postgres, Redis, ...).
NEEDS_STACK = pytest.mark.skipif(
    bool(_MISSING), reason="the distributed stack cannot start here: " + "; ".join(_MISSING)
)
#: Faster sensors than production's, so the tests do not wait for ticks.
FAST = {
    "KSEG_SENSOR_INTERVAL_SECONDS": "2",
    "KSEG_SENSOR_SETTLE_SECONDS": "1",
    "KSEG_AUTOMATION_INTERVAL_SECONDS": "2",
}


def new_folder() -> Path:
    """A stack folder under /tmp: pytest's own is closed to the postgres account."""
    folder = Path(tempfile.mkdtemp(prefix="kseg-stack-"))
    folder.chmod(0o711)
    return folder


def processes_in(folder: Path, leaders: set[int]) -> list[int]:
    """Live processes working in ``folder`` or in a group or session of ``leaders``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            text = Path(entry.path, "stat").read_text()
            state, _, group, session = text[text.rindex(")") + 2 :].split()[:4]
            if state in "ZXx":
                continue
            cwd = os.readlink(Path(entry.path, "cwd"))
            if cwd.startswith(f"{folder}/") or {int(group), int(session)} & leaders:
                found.append(int(entry.name))
    return found


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def leftovers(folder: Path, leaders: set[int], ports: deploy.Ports) -> list[str]:
    """What outlives the stack: processes and listening ports (empty when clean)."""
    found = [f"process {pid}" for pid in processes_in(folder, leaders)]
    numbers = [getattr(ports, name) for name in deploy.Ports.__dataclass_fields__]
    return found + [f"port {port}" for port in numbers if listening(port)]


def leader_pids(folder: Path) -> set[int]:
    """The PIDs of the services ``stack.json`` records (empty if none)."""
    with contextlib.suppress(FileNotFoundError):
        state = json.loads((folder / "stack.json").read_text())
        return {record["pid"] for record in state["services"].values()}
    return set()


def stop_and_check(folder: Path, ports: deploy.Ports) -> list[str]:
    """``down``, then what is left; anything left is killed so nothing outlives us."""
    leaders = leader_pids(folder)
    try:
        deploy.down(folder)
    finally:
        left = leftovers(folder, leaders, ports)
        for pid in processes_in(folder, leaders):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return left


def socket_owners() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket (IPv4 and IPv6)."""
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    address, port = fields[1].split(":")
                    listening[int(fields[9])] = (address, int(port, 16))
    return listening


def listening_of(pids: list[int]) -> list[tuple[str, int]]:
    """The (hex address, port) of the TCP sockets ``pids`` listen on."""
    sockets = socket_owners()
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    if target.startswith("socket:["):
                        inode = int(target[8:-1])
                        if inode in sockets:
                            found.append(sockets[inode])
    return found


def graphql(stack: deploy.Stack, query: str, variables: dict[str, Any] | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{stack.url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    assert not payload.get("errors"), payload["errors"]
    return payload["data"]


LAUNCH = """
mutation ($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
  }
}
"""
RUN = """
query ($id: ID!) {
  runOrError(runId: $id) {
    ... on Run { status startTime endTime tags { key value } }
  }
}
"""
EVENTS = """
query ($id: ID!) {
  logsForRun(runId: $id) {
    ... on EventConnection { events { __typename ... on MessageEvent { message } } }
  }
}
"""


def launch(
    stack: deploy.Stack, job: str, partition: str | None = None, location: str = "stack_smoke"
) -> str:
    """Launch ``job`` of ``location`` as the UI does (into the run queue); its run ID."""
    tags = [{"key": "dagster/partition", "value": partition}] if partition else []
    params = {
        "selector": {
            "repositoryLocationName": location,
            "repositoryName": "__repository__",
            "jobName": job,
        },
        "runConfigData": {},
        "executionMetadata": {"tags": tags},
    }
    result = graphql(stack, LAUNCH, {"params": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    assert result["run"]["status"] in ("QUEUED", "STARTING", "STARTED")
    return result["run"]["runId"]


def wait_done(stack: deploy.Stack, run_ids: list[str]) -> list[dict]:
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        runs = [graphql(stack, RUN, {"id": run_id})["runOrError"] for run_id in run_ids]
        if all(run["status"] in ("SUCCESS", "FAILURE", "CANCELED") for run in runs):
            return runs
        assert time.monotonic() < deadline, f"runs not finished in time: {runs}"
        time.sleep(1)


def messages(stack: deploy.Stack, run_id: str) -> list[tuple[str, str]]:
    events = graphql(stack, EVENTS, {"id": run_id})["logsForRun"]["events"]
    return [(event["__typename"], event.get("message", "")) for event in events]


def s3_client(stack: deploy.Stack) -> contextlib.AbstractContextManager[Any]:
    """A botocore S3 client of ``stack`` (a context manager)."""
    return deploy.s3_client(stack.env)


ACTIVE = """
{
  runsOrError(filter: {statuses: [QUEUED, NOT_STARTED, STARTING, STARTED]}) {
    ... on Runs { results { runId } }
  }
}
"""


def wait_idle(stack: deploy.Stack, quiet: int = 3) -> None:
    """Wait until no run is queued or in progress for ``quiet`` looks in a row, 2 s apart.

    kseg's code location shares the stack: its automation may still be running
    follow-up runs that hold worker slots.
    """
    deadline, calm = time.monotonic() + RUN_TIMEOUT, 0
    while calm < quiet:
        runs = graphql(stack, ACTIVE)["runsOrError"]["results"]
        calm = 0 if runs else calm + 1
        assert time.monotonic() < deadline, f"runs still active: {runs}"
        time.sleep(2)
