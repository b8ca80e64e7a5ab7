"""Print, as JSON, what the stack's Dagster instance (Postgres) holds about kseg's images.

Run as its own process with the stack's environment (``DAGSTER_HOME`` and the
``DAGSTER_PG_*`` variables): the tests read the run history the way any third
process would, not through the webserver or the workers.
"""

import json

import dagster as dg

from assets.names import IMAGE_ASSETS, PARTITION_TAG, PARTITIONS_NAME


def main() -> None:
    with dg.DagsterInstance.get() as instance:
        runs = [
            {
                "id": record.dagster_run.run_id,
                "job": record.dagster_run.job_name,
                "status": record.dagster_run.status.value,
                "partition": record.dagster_run.tags.get(PARTITION_TAG),
                "task": record.dagster_run.tags.get("dagster-celery/task_id"),
                "start": record.start_time,
                "end": record.end_time,
            }
            for record in instance.get_run_records()
        ]
        materialized = {
            asset: sorted(instance.get_materialized_partitions(dg.AssetKey(asset)))
            for asset in IMAGE_ASSETS
        }
        storage = type(instance.run_storage).__name__
        partitions = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    print(
        json.dumps(
            {
                "storage": storage,
                "partitions": partitions,
                "materialized": materialized,
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
