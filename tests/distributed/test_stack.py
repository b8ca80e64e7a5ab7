"""The local distributed stack (``assets/deploy.py``, ``deploy/``), brought up for real.

One stack for the module: Postgres, Redis, SeaweedFS's S3 server, two Celery workers
(concurrency 1), the Dagster daemon and webserver, all on 127.0.0.1, loading the tiny
code location of ``stack_location.py`` (kseg's own needs its ``s3://`` support). The
tests check that every service answers on loopback only, that a run launched as the
UI launches it goes through the run queue to a Celery worker and reaches the object
store, that two runs of one partition never overlap while another partition runs
beside them, that a taken port or a missing program is refused before anything
starts, and that ``down`` leaves no process and no listening port behind. The module
fixture's finalizer stops the stack and checks that, also when a test fails.

Skipped when Postgres, Redis or a Python package of the stack is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assets import deploy

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.timeout(900),
    pytest.mark.skipif(bool(deploy.missing()), reason="; ".join(deploy.missing())),
]

HERE = Path(__file__).resolve().parent
WORKSPACE = HERE / "workspace.yaml"
SERVICES = {"postgres", "redis", "s3", "worker-1", "worker-2", "daemon", "webserver"}
#: Bounds (seconds).
RUN_TIMEOUT = 180


# --- helpers ----------------------------------------------------------------------


def _new_folder() -> Path:
    """A stack folder under /tmp: pytest's own is closed to the postgres account."""
    folder = Path(tempfile.mkdtemp(prefix="kseg-stack-"))
    folder.chmod(0o711)
    return folder


def _processes_in(folder: Path, leaders: set[int]) -> list[int]:
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


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _leftovers(folder: Path, leaders: set[int], ports: deploy.Ports) -> list[str]:
    """What outlives the stack: processes and listening ports (empty when clean)."""
    found = [f"process {pid}" for pid in _processes_in(folder, leaders)]
    numbers = [getattr(ports, name) for name in deploy.Ports.__dataclass_fields__]
    return found + [f"port {port}" for port in numbers if _listening(port)]


def _leaders(folder: Path) -> set[int]:
    with contextlib.suppress(FileNotFoundError):
        state = json.loads((folder / "stack.json").read_text())
        return {record["pid"] for record in state["services"].values()}
    return set()


def _stop_and_check(folder: Path, ports: deploy.Ports) -> list[str]:
    """``down``, then what is left; anything left is killed so nothing outlives us."""
    leaders = _leaders(folder)
    try:
        deploy.down(folder)
    finally:
        left = _leftovers(folder, leaders, ports)
        for pid in _processes_in(folder, leaders):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return left


def _socket_owners() -> dict[int, tuple[str, int]]:
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


def _listening_of(pids: list[int]) -> list[tuple[str, int]]:
    """The (hex address, port) of the TCP sockets ``pids`` listen on."""
    sockets = _socket_owners()
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


def launch(stack: deploy.Stack, job: str, partition: str | None = None) -> str:
    """Launch ``job`` as the UI does (into the run queue); its run ID."""
    tags = [{"key": "dagster/partition", "value": partition}] if partition else []
    params = {
        "selector": {
            "repositoryLocationName": "stack_smoke",
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


@contextlib.contextmanager
def s3_client(stack: deploy.Stack) -> Iterator[Any]:
    import botocore.session

    env = stack.env
    client = botocore.session.get_session().create_client(
        "s3",
        region_name=env["AWS_DEFAULT_REGION"],
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    try:
        yield client
    finally:
        client.close()


# --- the stack --------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack() -> Iterator[deploy.Stack]:
    folder, ports = _new_folder(), deploy.Ports.free()
    try:
        yield deploy.up(folder, workers=2, ports=ports, workspace=WORKSPACE)
    finally:
        left = _stop_and_check(folder, ports)
        shutil.rmtree(folder, ignore_errors=True)
        assert not left, f"left behind by the stack: {left}"


def test_every_service_answers_on_loopback_only(stack: deploy.Stack, record_property: Any) -> None:
    report = {service.name: service for service in deploy.status(stack.folder)}
    assert set(report) == SERVICES
    assert all(service.answering for service in report.values()), [str(s) for s in report.values()]
    record_property("stack_rss_mib", round(sum(s.rss_bytes for s in report.values()) / 2**20))

    import psycopg2

    env = stack.env
    connection = psycopg2.connect(
        host=env["DAGSTER_PG_HOST"],
        port=env["DAGSTER_PG_PORT"],
        user=env["DAGSTER_PG_USERNAME"],
        password=env["DAGSTER_PG_PASSWORD"],
        dbname=env["DAGSTER_PG_DB"],
    )
    try:
        with connection.cursor() as cursor:  # Dagster's schema is there
            cursor.execute("SELECT count(*) FROM runs")
            assert cursor.fetchone() is not None
    finally:
        connection.close()
    with socket.create_connection(("127.0.0.1", stack.ports.redis), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(16) == b"+PONG\r\n"
    with s3_client(stack) as client:
        names = {bucket["Name"] for bucket in client.list_buckets()["Buckets"]}
    assert names >= {"kseg-store", "kseg-incoming"}
    assert env["KSEG_STORE_ROOT"] == "s3://kseg-store"
    assert env["KSEG_INCOMING_DIR"] == "s3://kseg-incoming"
    with urllib.request.urlopen(f"{stack.url}/server_info", timeout=10) as response:
        assert "dagster_webserver_version" in json.loads(response.read())
    daemons = graphql(
        stack, "{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"
    )["instance"]["daemonHealth"]["allDaemonStatuses"]
    required = {d["daemonType"]: d["healthy"] for d in daemons if d["required"]}
    assert {"QUEUED_RUN_COORDINATOR", "MONITORING", "SENSOR"} <= set(required)
    assert all(required.values()), required

    from celery import Celery

    app = Celery("kseg-test", broker=env["DAGSTER_CELERY_BROKER_URL"], set_as_current=False)
    try:
        nodes = {name.split("@")[0] for reply in app.control.ping(timeout=2) for name in reply}
    finally:
        app.close()
    assert nodes >= {"kseg-worker-1", "kseg-worker-2"}

    leaders = _leaders(stack.folder)
    sockets = _listening_of(_processes_in(stack.folder, leaders))
    assert sockets, "no service listens"
    # 0100007F is 127.0.0.1 as /proc/net/tcp writes it.
    assert {address for address, _ in sockets} == {"0100007F"}, sockets
    assert {port for _, port in sockets} >= {stack.ports.postgres, stack.ports.s3}


def test_a_queued_run_executes_on_a_celery_worker(stack: deploy.Stack) -> None:
    run_id = launch(stack, "smoke_job")
    (run,) = wait_done(stack, [run_id])
    assert run["status"] == "SUCCESS", messages(stack, run_id)
    events = messages(stack, run_id)
    kinds = [kind for kind, _ in events]
    assert "RunEnqueuedEvent" in kinds  # through the run queue
    assert any("Celery task has been forwarded to the broker" in m for _, m in events)
    task_id = {tag["key"]: tag["value"] for tag in run["tags"]}["dagster-celery/task_id"]

    with s3_client(stack) as client:
        body = client.get_object(Bucket="kseg-store", Key=f"smoke/{run_id}.json")["Body"]
        note = json.loads(body.read())
    assert note["worker"] in ("worker-1", "worker-2")
    logs = {
        name: (stack.folder / name / f"{name}.log").read_text(errors="replace")
        for name in ("worker-1", "worker-2")
    }
    received = f"Task execute_job[{task_id}] received"
    assert [name for name, text in logs.items() if received in text] == [note["worker"]]

    from celery import Celery

    env = stack.env
    app = Celery(
        "kseg-test",
        broker=env["DAGSTER_CELERY_BROKER_URL"],
        backend=env["DAGSTER_CELERY_BACKEND_URL"],
        set_as_current=False,
    )
    try:  # celery.yaml's result_extended keeps the worker's name with the result
        result = app.AsyncResult(task_id)
        assert result.state == "SUCCESS"
        assert result.worker.startswith(f"kseg-{note['worker']}@")
    finally:
        app.close()


def test_one_run_per_image_at_a_time_and_images_side_by_side(stack: deploy.Stack) -> None:
    first_a, second_a, b = (launch(stack, "nap_job", p) for p in ("a", "a", "b"))
    ids = [first_a, second_a, b]
    runs = dict(zip(ids, wait_done(stack, ids), strict=True))
    assert all(run["status"] == "SUCCESS" for run in runs.values()), runs
    a1, a2 = sorted((runs[first_a], runs[second_a]), key=lambda run: run["startTime"])
    assert a1["endTime"] <= a2["startTime"], (a1, a2)  # partition "a": never together
    assert runs[b]["startTime"] < a1["endTime"] and a1["startTime"] < runs[b]["endTime"]

    def worker(run_id: str) -> str:
        (naps,) = [m for _, m in messages(stack, run_id) if m.startswith("napping on ")]
        return naps.removeprefix("napping on ")

    assert {worker(first_a), worker(b)} == {"worker-1", "worker-2"}


def test_a_taken_port_is_refused_and_nothing_starts() -> None:
    folder, ports = _new_folder(), deploy.Ports.free()
    try:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", ports.webserver))  # the last service to start
            holder.listen()
            with pytest.raises(deploy.DeployError) as refused:
                deploy.up(folder, workers=2, ports=ports, workspace=WORKSPACE)
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith("webserver: ")
        assert f"port {ports.webserver}" in message and "taken" in message
        assert not (folder / "stack.json").exists()
        assert deploy.status(folder) == []
        assert _processes_in(folder, set()) == []
        assert deploy.down(folder) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_missing_program_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no /usr/bin
    folder = _new_folder()
    try:
        with pytest.raises(deploy.DeployError) as refused:
            deploy.up(folder, ports=deploy.Ports.free(), workspace=WORKSPACE)
        message = str(refused.value)
        assert "\n" not in message
        assert "redis: redis-server not found" in message
        assert "apt-get install redis-server" in message
        assert _processes_in(folder, set()) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_start_that_fails_stops_what_it_started() -> None:
    folder, ports = _new_folder(), deploy.Ports.free()
    try:
        with pytest.raises(deploy.DeployError) as late:  # no stack answers in a second
            deploy.up(folder, workers=1, ports=ports, workspace=WORKSPACE, timeout=1)
        assert "in time" in str(late.value) and "\n" not in str(late.value)
        assert _leftovers(folder, set(), ports) == []
        assert deploy.status(folder) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_up_again_is_the_same_stack(stack: deploy.Stack) -> None:
    again = deploy.up(stack.folder, workers=2, workspace=WORKSPACE)
    assert again.pids == stack.pids and again.ports == stack.ports


# Last: it stops the module's stack (the fixture's finalizer then finds it stopped).
def test_down_leaves_no_process_and_no_port_behind(stack: deploy.Stack) -> None:
    leaders = _leaders(stack.folder)
    assert leaders == set(stack.pids.values())
    assert _processes_in(stack.folder, leaders)
    stopped = deploy.down(stack.folder)
    assert set(stopped) == SERVICES
    assert _leftovers(stack.folder, leaders, stack.ports) == []
    sockets = [Path(f"/tmp/seaweedfs-master-grpc-{stack.ports.weed_master_grpc}.sock")]
    assert not any(path.exists() for path in sockets)
    assert deploy.down(stack.folder) == []  # idempotent
    assert deploy.status(stack.folder) == []
