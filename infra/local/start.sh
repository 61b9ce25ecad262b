#!/usr/bin/env bash
# Start the local development stack: an S3 endpoint (moto's server) and a Ray head with the
# dashboard (so `ray job submit` works), both on 127.0.0.1. Their process ids go to
# $STATE_DIR/*.pid for infra/local/stop.sh; the variables to use them go to $STATE_DIR/env.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
STATE_DIR=${STATE_DIR:-.demo}
S3_PORT=${S3_PORT:-9000}
RAY_PORT=${RAY_PORT:-6390}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
mkdir -p "$STATE_DIR"
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} RAY_USAGE_STATS_ENABLED=0
# Development-only credentials for the local moto endpoint (not secrets).
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ACCESS_KEY_ID=local \
       AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1

# A port another process holds (a test suite's Ray dashboard takes 8265 first) would make the
# stack fail later with a confusing error, or answer from someone else's service: refuse now.
for port in "$S3_PORT" "$RAY_PORT" "$DASHBOARD_PORT"; do
    if ! "$VENV/bin/python" -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null; then
        echo "port $port on 127.0.0.1 is in use by another process: stop it, or set S3_PORT/RAY_PORT/DASHBOARD_PORT" >&2
        exit 1
    fi
done

"$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$STATE_DIR/moto.log" 2>&1 &
echo $! >"$STATE_DIR/moto.pid"

# Stopped by SIGTERM (stop.sh): no 30 s drain, which only serves Ray Serve replicas.
start_ray() {
    RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 PATH="$PWD/$VENV/bin:$PATH" setsid "$VENV/bin/ray" start --head --block \
        --port="$RAY_PORT" --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
        --num-cpus="$(nproc)" --disable-usage-stats >>"$STATE_DIR/ray.log" 2>&1 &
    echo $! >"$STATE_DIR/ray.pid"
}
: >"$STATE_DIR/ray.log"
start_ray
# Ray gives its raylet a fixed 30 s to register: on a loaded machine the head can exit while
# starting ("The current node timed out during startup"). It is started again, twice at most.
RAY_STARTS=1

cat >"$STATE_DIR/env" <<ENV
export AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local
export AWS_DEFAULT_REGION=us-east-1 RAY_AUTH_MODE=$RAY_AUTH_MODE
export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
ENV

up() { "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" >/dev/null 2>&1; }

# Wait until both answer (or one has died).
for _ in $(seq 1 600); do
    s3=0; dash=0
    up "http://127.0.0.1:$S3_PORT/" && s3=1
    up "http://127.0.0.1:$DASHBOARD_PORT/api/version" && dash=1
    if [ $s3 = 1 ] && [ $dash = 1 ]; then
        "$VENV/bin/python" -c 'import sys; from pipeline.runtime.cluster import wait_for_job_submission as w; w(sys.argv[1], timeout_s=600)' \
            "http://127.0.0.1:$DASHBOARD_PORT"
        echo "local stack up: S3 $AWS_ENDPOINT_URL, Ray dashboard http://127.0.0.1:$DASHBOARD_PORT"
        exit 0
    fi
    kill -0 "$(cat "$STATE_DIR/moto.pid")" 2>/dev/null || { echo "moto server died: $STATE_DIR/moto.log" >&2; exit 1; }
    if ! kill -0 "$(cat "$STATE_DIR/ray.pid")" 2>/dev/null; then
        if [ "$RAY_STARTS" -ge 3 ]; then
            echo "ray head died while starting, $RAY_STARTS times: $STATE_DIR/ray.log" >&2; exit 1
        fi
        echo "ray head died while starting (see $STATE_DIR/ray.log): starting it again" >&2
        RAY_STARTS=$((RAY_STARTS + 1))
        start_ray
    fi
    sleep 0.5
done
echo "local stack did not come up in time" >&2
exit 1
