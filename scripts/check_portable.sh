#!/usr/bin/env bash
# The tests that must hold on any machine, run the way another machine would see them: PyTorch's portable CPU
# kernels (ATEN_CPU_CAPABILITY=default: another reduction order than this CPU's vector kernels), one thread,
# and every core loaded by two busy processes (slow steps, late signals), which this script starts and kills.
#   bash scripts/check_portable.sh [pytest arguments, e.g. -x or -k preempt]
# Covers the fault tests (SIGKILL, preemption, divergence, full disk), the run protocol, the multi-node and
# SLURM scripts, and the numerics (losses and ops against float64 references, distributed parity). pytest's
# temporary files go to a directory of this run's own (other pytest sessions on the machine rotate the shared
# one), removed at the end. Exit status: pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."

tests=(tests/tempnet/train/test_run_protocol.py tests/experiments/test_multinode.py tests/experiments/test_preemption.py
       tests/experiments/test_faults.py tests/experiments/test_faults_clip.py
       tests/tempnet/losses tests/tempnet/test_ops.py tests/tempnet/test_modules.py tests/tempnet/test_distributed.py)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's tempnet, in the trainers it starts too

base="$(mktemp -d -t check_portable.XXXXXX)"
busy=()
finish() {
  for pid in "${busy[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$base"
}
trap finish EXIT
for _ in 1 2; do
  (while :; do :; done) &
  busy+=($!)
done
echo "check_portable: ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1, busy processes ${busy[*]}" >&2
ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
  "${PYTHON:-python}" -m pytest -q -p no:cacheprovider --basetemp "$base/pytest" "${tests[@]}" "$@"
