#!/usr/bin/env bash
# The body of every <folder>/scripts/slurm.sbatch: a launch script on every node of a SLURM job, one launcher
# per node (srun, one task per node), requeued and resumed when the job is preempted or runs out of time.
#   sbatch --nodes=N <folder>/scripts/slurm.sbatch <folder>/scripts/SCRIPT.sh [arguments of SCRIPT.sh]
# The launch script gets (scripts/nodes.sh): NNODES = SLURM_JOB_NUM_NODES, MASTER_ADDR = the first host of
# SLURM_JOB_NODELIST, MASTER_PORT (default 20000 + job id mod 10000: jobs sharing a node do not collide),
# NODE_RANK = SLURM_NODEID of the node it runs on; NPROC (per node) defaults to SLURM_GPUS_ON_NODE when SLURM
# sets it, else to the script's own default.
# Preemption: the job asks SLURM for USR1 before its end (--signal=B:USR1@120, to this shell only); on USR1 it
# sends SIGTERM to the job step, which the launchers forward to every rank (they do not forward USR1): the
# trainers save a checkpoint and exit, then the job requeues itself (scontrol requeue). The trap is set first:
# after a USR1 that comes before the step has started, the job does not start it and requeues itself (exit
# 143). A scheduler's own preemption sends SIGTERM to every process and requeues the job (--requeue).
# Resume: when the run directory (OUT, else the script's default: the script prints it when asked with
# PRINT_OUTPUT_DIR=1, see scripts/nodes.sh) holds a checkpoint-<step>/ with its COMPLETE file, --resume is added
# to the arguments; a requeued job (SLURM_RESTART_COUNT > 0) resumes instead of repeating an --overwrite it was
# submitted with.
set -euo pipefail

preempted=0
trapped=0
step=
stop_step() {
  preempted=1
  trapped=1
  echo "slurm: USR1, stopping the run (SIGTERM to every rank)" >&2
  if [ -n "$step" ]; then kill -TERM "$step" 2>/dev/null || true; fi
}
trap stop_step USR1

error() { echo "error: $*" >&2; exit 2; }
[ $# -ge 1 ] || error "usage: sbatch --nodes=N <folder>/scripts/slurm.sbatch <folder>/scripts/SCRIPT.sh [arguments]"
script="$1"
shift
[ -f "$script" ] || error "launch script $script not found (submit from the repository root)"
[ -n "${SLURM_JOB_ID:-}" ] || error "SLURM_JOB_ID is not set: submit this with sbatch"

export NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
hosts="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"
export MASTER_ADDR="${hosts%%$'\n'*}"
[ -n "$MASTER_ADDR" ] || error "no host in SLURM_JOB_NODELIST=${SLURM_JOB_NODELIST:-}"
export MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 10000))}"
if [ -z "${NPROC:-}" ] && [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then export NPROC="$SLURM_GPUS_ON_NODE"; fi
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi  # srun >= 22.05

# ---- the resume rule ----------------------------------------------------------------------------------------
grep -q '^source scripts/nodes.sh' "$script" \
  || error "$script does not source scripts/nodes.sh: not a multi-process launch script slurm.sbatch can run"
run_dir="$(PRINT_OUTPUT_DIR=1 bash "$script")"  # the script's own answer (scripts/nodes.sh): OUT, else its default
checkpointed=0
if [ -n "$run_dir" ] && compgen -G "$run_dir/checkpoint-*/COMPLETE" > /dev/null; then checkpointed=1; fi
restarted=0
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then restarted=1; fi
args=()
resume=0
overwrite=0
for arg in "$@"; do
  case "$arg" in
    --resume) resume=1 ;;
    --overwrite) if [ "$checkpointed$restarted" = 11 ]; then continue; fi; overwrite=1 ;;
  esac
  args+=("$arg")
done
if [ "$checkpointed" = 1 ] && [ "$resume$overwrite" = 00 ]; then
  args+=(--resume)
  echo "slurm: $run_dir holds a checkpoint: resuming it" >&2
fi

# ---- one launcher per node ------------------------------------------------------------------------------------
echo "slurm: job $SLURM_JOB_ID, $NNODES node(s), master $MASTER_ADDR:$MASTER_PORT, run directory ${run_dir:-?}:" \
  "$script ${args[*]}" >&2
status=143  # a USR1 before the step started: it is not started (the status of a run stopped by SIGTERM)
if [ "$preempted" = 0 ]; then
  srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=0 \
    bash -c 'export NODE_RANK="$SLURM_NODEID"; exec bash "$@"' node "$script" "${args[@]}" &
  step=$!
  if [ "$preempted" = 1 ]; then kill -TERM "$step" 2>/dev/null || true; fi  # USR1 came before $step was set
  while :; do
    trapped=0
    if wait "$step"; then status=0; else status=$?; fi
    # A trap interrupts `wait` (status 128 + signal); wait again, which returns the step's own status even
    # when the step has already ended (bash keeps it).
    [ "$trapped" = 1 ] || break
  done
fi
if [ "$preempted" = 1 ] && [ "$status" -ne 0 ]; then
  echo "slurm: requeueing job $SLURM_JOB_ID (the next start resumes $run_dir)" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
