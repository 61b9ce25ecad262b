#!/usr/bin/env bash
# `make demo`: generated shards in a local S3 endpoint -> `ray job submit` of jobs/extract.py on
# a local Ray head -> the Parquet output through DuckDB -> revisitop miniature: prepare,
# extract, build a distractor index, evaluate -> training on a GLDv2-style miniature: prepare,
# `ray job submit` of jobs/train.py, extract with the trained weights -> stop the stack.
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
    --output "s3://$BUCKET/runs/demo" --precision auto --batch-size 4
echo "--- the output, read back through DuckDB:"
"$PY" jobs/inspect_output.py "s3://$BUCKET/runs/demo"

echo "--- revisitop on a generated miniature: prepare -> extract -> R1M-style index -> evaluate"
RAY_GCS=127.0.0.1:${RAY_PORT:-6390}
MINI="s3://$BUCKET/revisitop"
"$PY" -c "from pipeline.datasets.synthetic import write_revisitop_miniature as w; w('$MINI/data', classes=4, per_class=4, distractors=12)"
"$PY" jobs/prepare_revisitop.py --root "$MINI/data" --dataset roxford5k --output "$MINI/shards/roxf"
"$PY" jobs/prepare_revisitop.py --root "$MINI/data" --dataset revisitop1m --output "$MINI/shards/r1m"
for part in roxf/database roxf/queries r1m/distractors; do
    "$PY" jobs/extract.py --ray-address "$RAY_GCS" --input "$MINI/shards/$part/*.tar" \
        --output "$MINI/runs/$part" --image-size 256 --precision auto --batch-size 4
done
"$PY" jobs/build_index.py --ray-address "$RAY_GCS" --descriptors "$MINI/runs/r1m/distractors" \
    --output "$MINI/indexes/r1m" --shards 2 --factory Flat
"$PY" jobs/evaluate.py --gnd "$MINI/data/roxford5k/gnd_roxford5k.pkl" \
    --queries "$MINI/runs/roxf/queries" --database "$MINI/runs/roxf/database" \
    --distractors "$MINI/indexes/r1m" --report "$STATE_DIR/report.json"
echo "report: $STATE_DIR/report.json, $STATE_DIR/report.md"

echo "--- training on a generated GLDv2-style miniature: prepare -> ray job submit train.py -> extract"
GLD="s3://$BUCKET/gldv2"
"$PY" -c "from pipeline.datasets.synthetic import write_gldv2_miniature as w; w('$GLD/raw', classes=4, per_class=24)"
"$PY" jobs/prepare_gldv2.py --csv "$GLD/raw/train_clean.csv" --images "$GLD/raw/train" \
    --output "$GLD/shards" --shard-size 24
"$VENV/bin/ray" job submit --address "$RAY_ADDRESS" -- \
    "$PY" "$PWD/jobs/train.py" --input "$GLD/shards/train-{000000..000003}.tar" \
    --output "$GLD/runs/demo" --weights random --backbone resnet18 --dim 64 \
    --glam-config '{"reduced_channels": 64}' --image-size 64 --batch-size 16 --epochs 2 \
    --lr 0.002 --workers 2 --log-every 3
"$PY" jobs/extract.py --ray-address "$RAY_GCS" --input "s3://$BUCKET/shards/{000000..$last}.tar" \
    --output "s3://$BUCKET/runs/demo-trained" --weights "$GLD/runs/demo/glam.safetensors" \
    --image-size 256 --batch-size 4
"$PY" jobs/inspect_output.py "s3://$BUCKET/runs/demo-trained"
