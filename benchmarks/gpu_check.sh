#!/usr/bin/env bash
# The one command for the GPU machine, run from the repository root:
#
#   bash benchmarks/gpu_check.sh [--tests-only | --bench-only] [--pytest-args "..."] [--bench-args "..."]
#                                [--tests-timeout S] [--bench-budget S]
#
# (the extra arguments split as in a shell: --pytest-args "tests/test_kernels_gpu.py -k 'a or b'")
#
# 1. installs the wheels carried in .whl/ (adasplash, entmax) into /tmp/site, on PYTHONPATH;
# 2. prints nvidia-smi, the python, torch and Triton versions and the card;
# 3. runs the GPU tests (python3 -m pytest -m gpu -q -x), log in $OUT/gpu_tests.log; a failure
#    does not stop the script;
# 4. runs the quick benchmark (python3 -m benchmarks.run), JSON / markdown / PNG and bench.log in $OUT;
# 5. prints the test outcome and the benchmark's short table last.
# OUT defaults to benchmarks/results. Exit status: nonzero when the tests or the benchmark failed.
# On a fresh machine (Triton compiling every kernel) the tests took 7.5 minutes on an H200, and
# once more than 9 (31 of 32 passed within 540 s), the benchmark about 7: where one command may
# run at most 10 minutes, run --tests-only and --bench-only apart, and the tests in two calls
# (--pytest-args "tests/test_kernels_gpu.py", then --pytest-args "tests/test_compile_backend.py
# tests/test_models.py").
set -uo pipefail
cd "$(dirname "$0")/.."

run_tests=1 run_bench=1 pytest_args="" bench_args="" tests_timeout=560 bench_budget=480
while [ $# -gt 0 ]; do
    case "$1" in
        --tests-only) run_bench=0 ;;
        --bench-only) run_tests=0 ;;
        --pytest-args) pytest_args="$2"; shift ;;
        --bench-args) bench_args="$2"; shift ;;
        --tests-timeout) tests_timeout="$2"; shift ;;
        --bench-budget) bench_budget="$2"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)"; exit 2 ;;
    esac
    shift
done

export OUT="${OUT:-benchmarks/results}" PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1
mkdir -p "$OUT"

echo "== 1. carried wheels"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" && ls .whl
else
    echo "none in .whl/: the adasplash package and entmax will be missing"
fi

echo "== 2. machine"
command -v nvidia-smi > /dev/null && nvidia-smi
python3 - <<'EOF'
import platform, torch, triton
print(f"python {platform.python_version()} | torch {torch.__version__} (CUDA {torch.version.cuda}) | triton {triton.__version__}")
print("card:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
for name in ("adasplash", "entmax"):
    try:
        print(f"{name}: {__import__(name).__file__}")
    except ImportError:
        print(f"{name}: not importable")
EOF

tests_rc=skipped
if [ "$run_tests" = 1 ]; then
    echo "== 3. GPU tests"
    timeout_arg=""
    python3 -c "import pytest_timeout" 2> /dev/null && timeout_arg="--timeout=$tests_timeout"
    # the extra arguments split as a shell would split them (quotes kept: -k 'a or b')
    eval "extra=($pytest_args)"
    # shellcheck disable=SC2086
    timeout -k 10 "$tests_timeout" python3 -m pytest -m gpu -q -x $timeout_arg "${extra[@]}" 2>&1 \
        | tee "$OUT/gpu_tests.log"
    tests_rc=${PIPESTATUS[0]}
fi

bench_rc=skipped
if [ "$run_bench" = 1 ]; then
    echo "== 4. benchmark"
    eval "extra=($bench_args)"
    timeout -k 10 $((bench_budget + 120)) python3 -m benchmarks.run --out "$OUT" --budget-s "$bench_budget" \
        "${extra[@]}" 2>&1 | tee "$OUT/bench.log"
    bench_rc=${PIPESTATUS[0]}
fi

echo "== 5. summary"
if [ "$run_tests" = 1 ]; then
    echo "GPU tests: exit $tests_rc ($(grep -E '(passed|failed|error|skipped|deselected|no tests ran)' "$OUT/gpu_tests.log" | tail -1))"
fi
if [ "$run_bench" = 1 ]; then
    echo "benchmark: exit $bench_rc"
    latest=$(ls -t "$OUT"/bench_*.json 2> /dev/null | head -1)
    # the report rewrites the markdown and the plot, so a run cut short still has them
    [ -n "$latest" ] && python3 -m benchmarks.report "$latest"
fi
[ "$tests_rc" = 0 ] || [ "$tests_rc" = skipped ] || exit 1
[ "$bench_rc" = 0 ] || [ "$bench_rc" = skipped ] || exit 1
