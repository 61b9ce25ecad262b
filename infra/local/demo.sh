#!/usr/bin/env bash
# `make demo`: generated shards in a local S3 endpoint -> `ray job submit` of jobs/extract.py on
# a local Ray head -> the Parquet output through DuckDB -> stop the stack.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
PY="$PWD/$VENV/bin/python"
STATE_DIR=${STATE_DIR:-.demo}
BUCKET=${BUCKET:-glam-demo}
SHARDS=${SHARDS:-3}
IMAGES=${IMAGES:-8}

infra/local/stop.sh >/dev/null 2>&1 || true
trap 'infra/local/stop.sh' EXIT
infra/local/start.sh
# shellcheck disable=SC1091
source "$STATE_DIR/env"

"$PY" jobs/make_shards.py --output "s3://$BUCKET/shards" --shards "$SHARDS" --images "$IMAGES" --bad
last=$(printf '%06d' $((SHARDS - 1)))
"$VENV/bin/ray" job submit --address "$RAY_ADDRESS" -- \
    "$PY" "$PWD/jobs/extract.py" --input "s3://$BUCKET/shards/{000000..$last}.tar" \
    --output "s3://$BUCKET/runs/demo" --precision bf16 --batch-size 4
echo "--- the output, read back through DuckDB:"
"$PY" jobs/inspect_output.py "s3://$BUCKET/runs/demo"
