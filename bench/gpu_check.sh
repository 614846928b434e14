#!/usr/bin/env bash
# The CUDA target on a real GPU, in at most 7 minutes, with no network (every step has a hard
# limit: 3 x 40 s for the header, 150 s for the tests, 120 s for the benchmark: 6 min 30 s at
# worst, usually far less):
#   1. the CUDA test suite (tests/cuda) on the device, not the simulator;
#   2. bench/bench_gpu.py: triad against CuPy and a device-to-device copy, a reduction against
#      cupy.sum, and the dispatcher's CPU/GPU choice across sizes against the best target.
# Results (gpu.json, gpu_check.log, tests.log) go to $OUT (default: a new temporary folder).
#
#   bash bench/gpu_check.sh             # on a machine with a GPU, Numba(-CUDA) and CuPy
#   bash bench/gpu_check.sh --dry-run   # anywhere: the simulator, tiny sizes (logic check)
#
# It uses the machine's python3 (or $PYTHON) as it is: nothing is installed or downloaded; the
# working tree is put on PYTHONPATH, with the gallery (kernels/) importable as veda_kernels.
set -uo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
dry=""
[[ "${1:-}" == "--dry-run" ]] && dry="--dry-run"

shim="$(mktemp -d)"
ln -s "$root/kernels" "$shim/veda_kernels"
export PYTHONPATH="$root:$shim${PYTHONPATH:+:$PYTHONPATH}"
export VEDA_CACHE_DIR="$(mktemp -d)"
export PYTHONUNBUFFERED=1
if [[ -n "$dry" ]]; then
  export NUMBA_ENABLE_CUDASIM=1
else
  export NUMBA_ENABLE_CUDASIM=0
fi
status=0
log="$OUT/gpu_check.log"
{
  echo "# gpu_check $(date -u +%FT%TZ) ${dry:-(device)}"
  command -v nvidia-smi >/dev/null && timeout -k 10 30 nvidia-smi \
    --query-gpu=name,driver_version,memory.total --format=csv,noheader
  timeout -k 10 30 "$PY" -c "import sys, numba, numpy; print('python', sys.version.split()[0], 'numba', \
numba.__version__, 'numpy', numpy.__version__)"
  timeout -k 10 30 "$PY" -c "import veda; print('veda', veda.__version__, 'from', veda.__file__); \
print('cuda available:', veda.cuda.is_available(), veda.cuda.unavailable_reason() or '')"
} 2>&1 | tee "$log"

echo "## tests/cuda" | tee -a "$log"
VEDA_TEST_CUDA=1 timeout -k 10 140 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/cuda \
  2>&1 | tee "$OUT/tests.log" | tail -n 15 | tee -a "$log"
test_rc=${PIPESTATUS[0]}
[[ $test_rc -ne 0 ]] && status=1

echo "## bench/bench_gpu.py" | tee -a "$log"
timeout -k 10 110 "$PY" bench/bench_gpu.py $dry --out "$OUT" 2>&1 | tee -a "$log"
bench_rc=${PIPESTATUS[0]}
[[ $bench_rc -ne 0 ]] && status=1

echo "## tests rc=$test_rc bench rc=$bench_rc -> $status (results in $OUT)" | tee -a "$log"
rm -rf "$shim"
exit $status
