#!/usr/bin/env bash
# Set up (if needed), copy sample photos into the incoming folder and run the main
# job `segment_images` on them through Dagster. Afterwards `dagster dev` shows the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export KSEG_INCOMING_DIR="${KSEG_INCOMING_DIR:-data/incoming}"
.venv/bin/kseg samples "$KSEG_INCOMING_DIR"
.venv/bin/kseg run --incoming "$KSEG_INCOMING_DIR"
