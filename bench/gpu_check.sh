#!/usr/bin/env bash
# Everything that needs a GPU, in one call and under 8 minutes: the `cuda` tests (glam,
# extract), bench_model.py, bench_feed.py --decode gpu (the feed rate with the pipeline's
# device decode), bench_pipeline.py, and the FAISS GPU tests; one report, JSON and Markdown. A
# failing step is recorded with the tail of its output and the next one runs; the exit status
# is 1 when any step failed. Without a GPU it says so in one line and exits 0. See
# docs/gpu_check.md.
#
#   bash bench/gpu_check.sh
#
#   OUT / GPU_CHECK_OUT    the report's folder (default: $OUT where set, else bench/out/gpu_check)
#   GPU_CHECK_WHEELS=DIR   install the missing wheels from DIR first (pip --no-index)
#   GPU_CHECK_STEPS="..."  only these steps (default: cuda_tests model feed pipeline faiss_tests)
#   GPU_CHECK_BUDGET_S     the whole run's limit in seconds (default 450); each step also has its own
#   GPU_CHECK_FORCE=1      run the steps without a GPU too (to try this script on a CPU machine)
set -uo pipefail

START=$SECONDS
OUT_DIR=${GPU_CHECK_OUT:-${OUT:-}}
if [[ -n $OUT_DIR && $OUT_DIR != /* ]]; then OUT_DIR=$PWD/$OUT_DIR; fi
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
HELPER=bench/gpu_check.py

if ! probe=$("$PY" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null); then
    echo "gpu_check: cannot import torch with $PY; nothing can be checked" >&2
    exit 2
fi
if [[ ${probe##*$'\n'} != True && ${GPU_CHECK_FORCE:-0} != 1 ]]; then
    echo "gpu_check: no GPU (torch.cuda.is_available() is False); nothing to check"
    exit 0
fi

if [[ -z $OUT_DIR ]]; then
    OUT_DIR=$PWD/bench/out/gpu_check
    mkdir -p "$OUT_DIR" && printf '*\n' > "$OUT_DIR/../.gitignore"  # outputs stay out of git
fi
STEPS_DIR=$OUT_DIR/steps
mkdir -p "$STEPS_DIR" || exit 2
rm -f "$STEPS_DIR"/* "$OUT_DIR/gpu_check.json" "$OUT_DIR/gpu_check.md"
BUDGET=${GPU_CHECK_BUDGET_S:-450}
read -r -a STEPS <<< "${GPU_CHECK_STEPS:-cuda_tests model feed pipeline faiss_tests}"
declare -A LIMIT=([cuda_tests]=80 [model]=100 [feed]=150 [pipeline]=120 [faiss_tests]=60)
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} RAY_USAGE_STATS_ENABLED=0
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

echo "gpu_check: python $PY; report in $OUT_DIR"
"$PY" "$HELPER" device "$OUT_DIR" || echo "gpu_check: could not read the device's facts" >&2
"$PY" "$HELPER" deps "$OUT_DIR" || exit 2

if [[ -n ${GPU_CHECK_WHEELS:-} ]]; then
    mapfile -t WANT < <("$PY" "$HELPER" missing "$OUT_DIR")
    if ((${#WANT[@]})); then
        echo "gpu_check: installing ${WANT[*]} from $GPU_CHECK_WHEELS"
        PIP=("$PY" -m pip install -q --no-index --find-links "$GPU_CHECK_WHEELS")
        LOG=$OUT_DIR/pip_install.log
        if ! "${PIP[@]}" "${WANT[@]}" > "$LOG" 2>&1; then
            # A distribution's own Python (PEP 668) refuses; this node is a throwaway one.
            if grep -q externally-managed "$LOG" \
                && "${PIP[@]}" --break-system-packages "${WANT[@]}" >> "$LOG" 2>&1; then
                :
            else
                echo "gpu_check: pip install failed; the last lines of $LOG:"
                tail -n 15 "$LOG"
            fi
        fi
        "$PY" "$HELPER" deps "$OUT_DIR" || exit 2
    fi
fi

# CMD=(...) for step $1; returns 1 (with REASON set) when the step has nothing to run.
step_command() {
    local xml=--junitxml=$STEPS_DIR/$1.xml noconf=()
    "$PY" "$HELPER" have ray || noconf=(--noconftest) # tests/conftest.py imports ray
    case $1 in
        cuda_tests)
            local files=()
            mapfile -t files < <(grep -rl --include='test_*.py' 'pytest.mark.cuda' tests \
                | grep -vx 'tests/pipeline/index/test_gpu.py' | sort)
            if ((${#files[@]} == 0)); then
                REASON="no test file under tests/ carries pytest.mark.cuda"
                return 1
            fi
            CMD=("$PY" -m pytest -q -p no:cacheprovider -m cuda "$xml" "${noconf[@]}" "${files[@]}")
            ;;
        model)
            CMD=("$PY" bench/bench_model.py --device cuda --repeats 3 --batch 4)
            ;;
        feed)
            CMD=("$PY" bench/bench_feed.py --part all --shards 1 --repeats 1 --decode gpu)
            ;;
        pipeline)
            CMD=("$PY" bench/bench_pipeline.py --shards 2 --images 12 --batch-size 4 --precision bf16)
            ;;
        faiss_tests)
            CMD=("$PY" -m pytest -q -p no:cacheprovider -m cuda "$xml" tests/pipeline/index/test_gpu.py)
            ;;
        *)
            REASON="unknown step (steps: ${!LIMIT[*]})"
            return 1
            ;;
    esac
}

FAILED=0
for name in "${STEPS[@]}"; do
    REASON=$("$PY" "$HELPER" skip "$OUT_DIR" "$name")
    CMD=()
    if [[ -z $REASON ]]; then step_command "$name" || true; fi
    limit=${LIMIT[$name]:-60}
    left=$((BUDGET - (SECONDS - START) - 15))
    if [[ -z $REASON ]] && ((left < 20)); then REASON="out of the run's time (${BUDGET} s)"; fi
    if [[ -n $REASON ]]; then
        printf '%s\n' "$REASON" > "$STEPS_DIR/$name.skip"
        echo "gpu_check: $name skipped: $REASON"
        continue
    fi
    ((limit > left)) && limit=$left
    printf '%q ' "${CMD[@]}" > "$STEPS_DIR/$name.cmd"
    echo "$limit" > "$STEPS_DIR/$name.limit"
    echo "gpu_check: $name (timeout ${limit} s): ${CMD[*]}"
    t0=$(date +%s.%N)
    timeout -k 10 "$limit" "${CMD[@]}" > "$STEPS_DIR/$name.log" 2>&1 < /dev/null
    rc=$?
    t1=$(date +%s.%N)
    echo "$rc" > "$STEPS_DIR/$name.rc"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }' > "$STEPS_DIR/$name.wall"
    if ((rc != 0)); then
        FAILED=1
        echo "gpu_check: $name exited $rc; the last lines of its output:"
        tail -n 10 "$STEPS_DIR/$name.log"
    fi
done

"$PY" "$HELPER" report "$OUT_DIR" --steps "${STEPS[*]}" --wall "$((SECONDS - START))"
status=$?
if ((status > 1)); then
    echo "gpu_check: the report could not be written (exit $status); step logs in $STEPS_DIR" >&2
    exit 3
fi
# The report also fails a step that exited 0 without running a test (all skipped).
((FAILED || status)) && exit 1
exit 0
