"""The local distributed stack (``assets/deploy.py``, ``deploy/``), brought up for real.

The session's stack (``conftest.py``): Postgres, Redis, SeaweedFS's S3 server, two
Celery workers (concurrency 1), the Dagster daemon and webserver, all on 127.0.0.1,
loading kseg's code location and the tiny one of ``stack_location.py``. These tests
check that every service answers on loopback only, that a run launched as the UI
launches it goes through the run queue to a Celery worker and reaches the object
store, that two runs of one partition never overlap while another partition runs
beside them, that a taken port, a missing program or a start that fails leaves
nothing running, and that ``down`` leaves no process and no listening port behind.
kseg's own pipeline on the stack is in ``test_kseg_on_the_stack.py``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from assets import deploy

from .stack_helpers import (
    NEEDS_STACK,
    SERVICES,
    WORKSPACE,
    graphql,
    launch,
    leader_pids,
    leftovers,
    listening_of,
    messages,
    new_folder,
    processes_in,
    s3_client,
    wait_done,
    wait_idle,
)

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900), NEEDS_STACK]


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

    leaders = leader_pids(stack.folder)
    sockets = listening_of(processes_in(stack.folder, leaders))
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
    wait_idle(stack)  # both worker slots free
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
    folder, ports = new_folder(), deploy.Ports.free()
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
        assert processes_in(folder, set()) == []
        assert deploy.down(folder) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_missing_program_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no /usr/bin
    folder = new_folder()
    try:
        with pytest.raises(deploy.DeployError) as refused:
            deploy.up(folder, ports=deploy.Ports.free(), workspace=WORKSPACE)
        message = str(refused.value)
        assert "\n" not in message
        assert "redis: redis-server not found" in message
        assert "apt-get install redis-server" in message
        assert processes_in(folder, set()) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_start_that_fails_stops_what_it_started() -> None:
    folder, ports = new_folder(), deploy.Ports.free()
    try:
        with pytest.raises(deploy.DeployError) as late:  # no stack answers in a second
            deploy.up(folder, workers=1, ports=ports, workspace=WORKSPACE, timeout=1)
        assert "in time" in str(late.value) and "\n" not in str(late.value)
        assert leftovers(folder, set(), ports) == []
        assert deploy.status(folder) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_up_again_is_the_same_stack(stack: deploy.Stack) -> None:
    again = deploy.up(stack.folder, workers=2, workspace=WORKSPACE)
    assert again.pids == stack.pids and again.ports == stack.ports


# Last of the session (this module runs after test_kseg_on_the_stack.py): it stops the
# stack, and the fixture's finalizer then finds it stopped.
def test_down_leaves_no_process_and_no_port_behind(stack: deploy.Stack) -> None:
    leaders = leader_pids(stack.folder)
    assert leaders == set(stack.pids.values())
    assert processes_in(stack.folder, leaders)
    stopped = deploy.down(stack.folder)
    assert set(stopped) == SERVICES
    assert leftovers(stack.folder, leaders, stack.ports) == []
    sockets = [Path(f"/tmp/seaweedfs-master-grpc-{stack.ports.weed_master_grpc}.sock")]
    assert not any(path.exists() for path in sockets)
    assert deploy.down(stack.folder) == []  # idempotent
    assert deploy.status(stack.folder) == []


def test_kseg_deploy_says_in_one_line_that_a_port_is_taken() -> None:
    folder = new_folder()
    kseg = [str(Path(sys.executable).with_name("kseg")), "deploy"]
    try:
        with socket.socket() as holder:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):  # taken already: the same refusal
                holder.bind(("127.0.0.1", deploy.Ports().postgres))
                holder.listen()
            done = subprocess.run(
                [*kseg, "up", "--folder", str(folder)], capture_output=True, text=True, timeout=120
            )
        assert done.returncode == 1
        assert done.stderr.startswith("kseg deploy: error: postgres: port 15432 on 127.0.0.1")
        assert done.stderr.count("\n") == 1 and "taken" in done.stderr
        assert processes_in(folder, set()) == []
        status = subprocess.run(
            [*kseg, "status", "--folder", str(folder)], capture_output=True, text=True, timeout=120
        )
        assert status.returncode == 1
        assert status.stdout == f"kseg deploy: no stack runs in {folder}\n"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
