# Sourced by every multi-process launch script (<folder>/scripts/*.sh): where this node sits in a run over one
# or several nodes (machines), from the environment, and the matching flags of each launcher.
#   NNODES       nodes (default 1)                 NODE_RANK    this node, 0 .. NNODES-1 (default 0)
#   MASTER_ADDR  node 0's address (127.0.0.1; required when NNODES > 1)
#   MASTER_PORT  a free port on node 0, 1024 .. 65535 (default 29500)
#   NPROC        processes per node (each script's default: the paper's GPU count); world size NNODES x NPROC
#   HOSTFILE     DeepSpeed only: a hostfile ("host slots=N" lines) instead of the generated one; with NNODES=1,
#                DeepSpeed's own launch over ssh (pdsh) to every host it lists, started once
# Several nodes: start the same script on every node, with the same NNODES, NPROC, MASTER_ADDR, MASTER_PORT,
# arguments and run directory (a shared filesystem), and NODE_RANK 0 on the node at MASTER_ADDR, 1, 2, ... on
# the others; <folder>/scripts/slurm.sbatch does this under SLURM. With the defaults nothing changes.
# `launcher_args LAUNCHER NPROC` sets the array LAUNCHER_ARGS: the process and node flags of LAUNCHER. The scripts
# exec their launcher, so a scheduler's signal and the exit status are the launcher's own.

# PRINT_OUTPUT_DIR=1: print the script's run directory and exit, launching nothing (scripts/slurm.sh asks each
# launch script so); a script sets OUT to its default run directory before it sources this file.
if [ "${PRINT_OUTPUT_DIR:-}" = 1 ]; then printf '%s\n' "${OUT:-}"; exit 0; fi

_master_addr_given="${MASTER_ADDR:+1}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"

_nodes_error() { echo "error: $*" >&2; exit 2; }
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || _nodes_error "NNODES=$NNODES must be a positive integer"
[[ "$NODE_RANK" =~ ^[0-9]+$ ]] && [ "$NODE_RANK" -lt "$NNODES" ] \
  || _nodes_error "NODE_RANK=$NODE_RANK must be an integer from 0 to NNODES-1=$((NNODES - 1))"
[[ "$MASTER_PORT" =~ ^[1-9][0-9]{0,4}$ ]] && [ "$MASTER_PORT" -ge 1024 ] && [ "$MASTER_PORT" -le 65535 ] \
  || _nodes_error "MASTER_PORT=$MASTER_PORT must be a port number from 1024 to 65535 (below 1024 needs root)"
# several nodes meet at node 0: the default 127.0.0.1 would make every node wait for itself, forever
[ "$NNODES" -eq 1 ] || [ -n "$_master_addr_given" ] \
  || _nodes_error "NNODES=$NNODES needs MASTER_ADDR, the address of node 0 (the same on every node)"

launcher_args() {
  local nproc="$2"
  [[ "$nproc" =~ ^[1-9][0-9]*$ ]] || _nodes_error "NPROC=$nproc must be a positive integer"
  case "$1" in
    torchrun)  # static rendezvous at node 0
      LAUNCHER_ARGS=(--nproc_per_node "$nproc" --nnodes "$NNODES" --node_rank "$NODE_RANK"
                     --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT") ;;
    accelerate)  # --num_processes counts the processes of every machine
      LAUNCHER_ARGS=(--num_processes "$((nproc * NNODES))" --num_machines "$NNODES" --machine_rank "$NODE_RANK"
                     --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT") ;;
    deepspeed)  # several nodes: one launcher per node, without ssh (--no_ssh needs a hostfile naming the nodes)
      LAUNCHER_ARGS=(--num_gpus "$nproc")
      if [ "$NNODES" -gt 1 ]; then
        local hostfile="${HOSTFILE:-}"
        if [ -z "$hostfile" ]; then  # without ssh only the node count and slots matter: the names are placeholders
          hostfile="${TMPDIR:-/tmp}/tempnet-hostfile-${NNODES}x$nproc"  # one per layout: the launcher is exec'd
          local tmp
          tmp="$(mktemp "$hostfile.XXXXXX")"
          for ((i = 0; i < NNODES; i++)); do echo "node$i slots=$nproc"; done > "$tmp"
          mv -f "$tmp" "$hostfile"
        fi
        LAUNCHER_ARGS+=(--hostfile "$hostfile" --num_nodes "$NNODES" --no_ssh --node_rank "$NODE_RANK"
                        --master_addr "$MASTER_ADDR")
      elif [ -n "${HOSTFILE:-}" ]; then  # one launch over ssh to every host of the hostfile (DeepSpeed's pdsh mode;
        LAUNCHER_ARGS+=(--hostfile "$HOSTFILE")  # the master is the first host unless MASTER_ADDR is given)
        if [ -n "$_master_addr_given" ]; then LAUNCHER_ARGS+=(--master_addr "$MASTER_ADDR"); fi
      fi
      LAUNCHER_ARGS+=(--master_port "$MASTER_PORT") ;;
    *) _nodes_error "launcher_args: unknown launcher $1" ;;
  esac
}
