"""A tiny code location for the distributed-stack smoke tests (not kseg's own).

``touch_store`` writes one object to ``$KSEG_STORE_ROOT`` (an ``s3://`` URL on the
stack) saying which Celery worker ran it; ``nap`` sleeps, per partition, so the tests
can see the run queue's per-partition limit. Both jobs run in-process, as kseg's do.
"""

import json
import os
import socket
import time

import dagster as dg
from upath import UPath

#: Seconds each ``nap_job`` run sleeps.
NAP_SECONDS = 8


@dg.op
def touch_store(context: dg.OpExecutionContext) -> None:
    """Write ``smoke/<run id>.json`` under the store: worker name, host and PID."""
    worker = os.environ.get("KSEG_WORKER_NAME", "")
    target = UPath(os.environ["KSEG_STORE_ROOT"]) / "smoke" / f"{context.run_id}.json"
    note = {"worker": worker, "host": socket.gethostname(), "pid": os.getpid()}
    target.write_text(json.dumps(note))
    context.log.info(f"wrote {target} on {worker} (pid {os.getpid()})")


@dg.job(executor_def=dg.in_process_executor)
def smoke_job() -> None:
    touch_store()


@dg.op
def nap(context: dg.OpExecutionContext) -> None:
    """Sleep for a while, as a long segmentation would."""
    context.log.info(f"napping on {os.environ.get('KSEG_WORKER_NAME', '')}")
    time.sleep(NAP_SECONDS)


@dg.job(
    partitions_def=dg.StaticPartitionsDefinition(["a", "b"]),
    executor_def=dg.in_process_executor,
)
def nap_job() -> None:
    nap()


defs = dg.Definitions(jobs=[smoke_job, nap_job])
