#!/usr/bin/env bash
# Stop the local stack started by infra/local/start.sh, by the process ids it recorded.
set -uo pipefail
cd "$(dirname "$0")/../.."
STATE_DIR=${STATE_DIR:-.demo}
for name in ray moto; do
    pidfile="$STATE_DIR/$name.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        if [ "$name" = ray ]; then kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"; else kill -TERM "$pid"; fi
        for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
done
echo "local stack stopped"
