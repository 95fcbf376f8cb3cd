"""Runs over several nodes: the node layout a run records (tempnet.distributed.node_layout, trainer_state.json),
the launcher command lines of scripts/nodes.sh for two nodes, and the SLURM batch scripts (<folder>/scripts/
slurm.sbatch -> scripts/slurm.sh) run without SLURM: a fake job environment, and stubs for `srun` (one task per
node, started at once, signalled the way slurmstepd signals a step), `scontrol` and the launchers, which only
record what they were given. The real two-node runs (every launcher, losses against one process) are in
test_launch_scripts.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lm_runs import ENV, REPO

HOSTS = ["gpu-a17", "gpu-b03"]
JOB = 4242
TRAINING = sorted(str(p.relative_to(REPO)) for folder in ("GPT_2", "LLaMA-1", "LLaMA-2", "Bimodal-CL")
                  for p in (REPO / folder / "scripts").glob("*.sh")
                  if not p.name.startswith(("eval_", "alpaca_", "export_")))
LAUNCHER = {"deepspeed": "deepspeed", "torchrun": "torchrun", "accelerate": "accelerate launch"}

# ---- what a run records -----------------------------------------------------------------------------------


@pytest.mark.parametrize("env, world, expected", [
    ({"LOCAL_WORLD_SIZE": "2"}, 4, {"nnodes": 2, "nproc_per_node": 2}),  # torchrun, accelerate
    ({"LOCAL_SIZE": "1"}, 2, {"nnodes": 2, "nproc_per_node": 1}),  # the deepspeed launcher
    ({"LOCAL_WORLD_SIZE": "4"}, 4, {"nnodes": 1, "nproc_per_node": 4}),
    ({}, 1, {"nnodes": 1, "nproc_per_node": 1}),  # python train.py
])
def test_node_layout(env, world, expected, monkeypatch):
    from tempnet import distributed

    for key in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(distributed, "world_size_and_rank", lambda: (world, 0))
    assert distributed.node_layout() == expected


def test_trainer_state_names_the_layout_and_only_the_world_size_must_match(tmp_path, monkeypatch):
    from tempnet import distributed
    from tempnet.errors import UserError
    from tempnet.train import checkpoint as ckpt

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(distributed, "world_size_and_rank", lambda: (2, 0))
    ckpt.write_trainer_state(tmp_path, {"step": 5, "world_size": 2})
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state == {"step": 5, "world_size": 2, "nnodes": 2, "nproc_per_node": 1}
    assert ckpt.read_trainer_state(tmp_path, 2)["step"] == 5  # any layout of 2 processes resumes (1 node x 2 too)
    with pytest.raises(UserError, match="written by 2 processes, this run has 4"):
        ckpt.read_trainer_state(tmp_path, 4)


# ---- stubs -------------------------------------------------------------------------------------------------

_LAUNCHER_STUB = f"""#!{sys.executable}
import json, os, pathlib, signal, sys, time
argv = sys.argv[1:]
record = {{"argv": [pathlib.Path(sys.argv[0]).name, *argv],
          "env": {{k: os.environ.get(k) for k in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC")}}}}
if "--hostfile" in argv:
    record["hostfile"] = pathlib.Path(argv[argv.index("--hostfile") + 1]).read_text()
def log(entry):
    with open(os.environ["STUB_LOG"], "a") as f:
        f.write(json.dumps(entry) + "\\n")
if os.environ.get("STUB_WAIT"):  # a long run: SIGTERM makes it exit as a preempted trainer does
    signal.signal(signal.SIGTERM, lambda *_: (log({{"terminated": os.environ.get("NODE_RANK")}}), os._exit(143)))
log(record)
if os.environ.get("STUB_WAIT"):
    time.sleep(60)
"""

# srun: its own options first (recorded), then the command, once per node at once with that node's SLURM_NODEID;
# a signal goes to every process of every task, as slurmstepd delivers it; the exit status is the worst task's.
_SRUN_STUB = """#!/usr/bin/env bash
set -m
opts=()
while [[ "$1" == -* ]]; do opts+=("$1"); shift; done
printf '%s\\n' "${opts[*]}" >> "$STUB_LOG.srun"
pids=()
trapped=0
trap 'trapped=1; for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done' TERM  # before any task starts
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do
  SLURM_NODEID=$node SLURM_PROCID=$node "$@" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do
  while :; do trapped=0; wait "$p"; s=$?; [ "$trapped" = 1 ] || break; done
  [ "$s" -gt "$status" ] && status=$s
done
exit $status
"""

_SCONTROL_STUB = f"""#!/usr/bin/env bash
if [ "$1 $2" = "show hostnames" ]; then
  printf '%s\\n' {' '.join(HOSTS)}
  if [ -n "${{STUB_USR1:-}}" ]; then kill -USR1 "$PPID"; fi  # to the job shell before it starts the step
else
  echo "$*" >> "$STUB_LOG.scontrol"
fi
"""


@pytest.fixture
def stubs(tmp_path) -> tuple[dict, Path]:
    """(env, log): the launchers, srun and scontrol on PATH are stubs writing to `log` (JSON lines)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    for name, text in (("torchrun", _LAUNCHER_STUB), ("deepspeed", _LAUNCHER_STUB), ("accelerate", _LAUNCHER_STUB),
                       ("srun", _SRUN_STUB), ("scontrol", _SCONTROL_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in ENV.items() if not k.startswith("SLURM_") and k not in (
        "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC", "OUT", "HOSTFILE")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", STUB_LOG=str(log), TMPDIR=str(tmp_path))
    return env, log


def _calls(log: Path) -> list[dict]:
    return sorted((json.loads(line) for line in log.read_text().splitlines()),
                  key=lambda r: r.get("env", {}).get("NODE_RANK") or "")


def _flags(argv: list[str]) -> dict:
    """The launcher's own flags (before the training script): {--flag: value or True}."""
    out, i = {}, 1 + (argv[:2] == ["accelerate", "launch"])
    while i < len(argv) and argv[i].startswith("--"):
        has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--") and not argv[i + 1].endswith(".py")
        out[argv[i]] = argv[i + 1] if has_value else True
        i += 2 if has_value else 1
    return out


def _launch(script: str, env: dict, log: Path, *args: str, **extra) -> list[dict]:
    log.unlink(missing_ok=True)
    proc = subprocess.run(["bash", script, *args], cwd=REPO, env={**env, **extra}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return _calls(log)


# ---- scripts/nodes.sh: the launcher flags ------------------------------------------------------------------

def test_one_node_keeps_todays_command_lines(stubs):
    env, log = stubs
    (ds,) = _launch("GPT_2/scripts/scratch_tempnet.sh", env, log)
    assert ds["argv"][:6] == ["deepspeed", "--num_gpus", "8", "--master_port", "29500", "GPT_2/train.py"]
    (tr,) = _launch("LLaMA-2/scripts/frozen_7b.sh", env, log)
    assert _flags(tr["argv"]) == {"--nproc_per_node": "4", "--nnodes": "1", "--node_rank": "0",
                                  "--master_addr": "127.0.0.1", "--master_port": "29500"}
    (acc,) = _launch("LLaMA-1/scripts/finetune_7b.sh", env, log)
    assert _flags(acc["argv"]) == {"--config_file": "LLaMA-1/configs/accelerate_fsdp.yaml", "--num_processes": "4",
                                   "--num_machines": "1", "--machine_rank": "0", "--main_process_ip": "127.0.0.1",
                                   "--main_process_port": "29500"}


@pytest.mark.parametrize("script", [*TRAINING, "GPT_2/scripts/eval_scratch_tempnet.sh",
                                    "Bimodal-CL/scripts/eval_flickr30k.sh"])
def test_second_node_command_line(script, stubs):
    env, log = stubs
    (call,) = _launch(script, env, log, CKPT="ck", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.7",
                      MASTER_PORT="31000", NPROC="3")
    argv, flags = call["argv"], _flags(call["argv"])
    if argv[0] == "torchrun":
        assert {k: flags[k] for k in ("--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port")} \
            == {"--nproc_per_node": "3", "--nnodes": "2", "--node_rank": "1", "--master_addr": "10.0.0.7",
                "--master_port": "31000"}
    elif argv[0] == "deepspeed":  # no ssh: this node's launcher only, the hostfile only counts nodes and slots
        assert flags == {"--num_gpus": "3", "--hostfile": flags["--hostfile"], "--num_nodes": "2", "--no_ssh": True,
                         "--node_rank": "1", "--master_addr": "10.0.0.7", "--master_port": "31000"}
        assert call["hostfile"] == "node0 slots=3\nnode1 slots=3\n"
    else:  # accelerate counts the processes of all machines
        assert argv[:2] == ["accelerate", "launch"]
        assert {k: flags[k] for k in ("--num_processes", "--num_machines", "--machine_rank", "--main_process_ip",
                                      "--main_process_port")} == {
            "--num_processes": "6", "--num_machines": "2", "--machine_rank": "1", "--main_process_ip": "10.0.0.7",
            "--main_process_port": "31000"}


def test_a_given_hostfile_and_bad_layouts(stubs, tmp_path):
    env, log = stubs
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=8\nb slots=8\n")
    (call,) = _launch("GPT_2/scripts/scratch_tempnet.sh", env, log, NNODES="2", NODE_RANK="0", MASTER_ADDR="10.0.0.7",
                      HOSTFILE=str(hostfile))
    assert _flags(call["argv"])["--hostfile"] == str(hostfile) and "--no_ssh" in call["argv"]
    (call,) = _launch("GPT_2/scripts/scratch_tempnet.sh", env, log, HOSTFILE=str(hostfile))  # DeepSpeed over ssh
    assert _flags(call["argv"]) == {"--num_gpus": "8", "--hostfile": str(hostfile), "--master_port": "29500"}
    log.unlink()
    for bad, message in (({"NNODES": "2", "NODE_RANK": "2"}, "error: NODE_RANK=2 must be an integer from 0 to"),
                         ({"NNODES": "0"}, "error: NNODES=0 must be a positive integer"),
                         ({"NPROC": "two"}, "error: NPROC=two must be a positive integer"),
                         # each node would rendezvous with its own 127.0.0.1 and wait forever
                         ({"NNODES": "2", "NODE_RANK": "1"}, "error: NNODES=2 needs MASTER_ADDR"),
                         ({"MASTER_PORT": "70000"}, "error: MASTER_PORT=70000 must be a port number from 1024 to 65535"),
                         ({"MASTER_PORT": "80"}, "error: MASTER_PORT=80 must be a port number from 1024 to 65535")):
        proc = subprocess.run(["bash", "LLaMA-2/scripts/frozen_7b.sh"], cwd=REPO, env={**env, **bad},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stderr.startswith(message), (bad, proc.stderr)
        assert not log.exists()  # no launcher started


# ---- SLURM -------------------------------------------------------------------------------------------------

def _job_env(env: dict, **extra) -> dict:
    """What SLURM sets in a batch job of two nodes with 4 GPUs each (submitted from the repository root)."""
    return {**env, "SLURM_JOB_ID": str(JOB), "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2",
            "SLURM_JOB_NODELIST": "gpu-a17,gpu-b03", "SLURM_SUBMIT_DIR": str(REPO), "SLURM_GPUS_ON_NODE": "4",
            **{k: str(v) for k, v in extra.items()}}


def _sbatch(folder: str, script: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", f"{folder}/scripts/slurm.sbatch", script, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", ["GPT_2/scripts/scratch_tempnet.sh", "LLaMA-1/scripts/finetune_7b.sh",
                                    "LLaMA-2/scripts/chat_7b.sh", "Bimodal-CL/scripts/cc3m_isogclr_tempnet.sh"])
def test_slurm_starts_one_launcher_per_node(script, stubs):
    env, log = stubs
    proc = _sbatch(script.split("/")[0], script, _job_env(env), "train.max_steps=10")
    assert proc.returncode == 0, proc.stderr
    calls = _calls(log)
    port = str(20000 + JOB % 10000)
    assert [c["env"] for c in calls] == [{"NNODES": "2", "NODE_RANK": str(rank), "MASTER_ADDR": HOSTS[0],
                                          "MASTER_PORT": port, "NPROC": "4"} for rank in (0, 1)]
    for rank, call in enumerate(calls):
        argv, flags = call["argv"], _flags(call["argv"])
        assert argv[-1] == "train.max_steps=10" and "--resume" not in argv
        rank_flag = {"torchrun": "--node_rank", "deepspeed": "--node_rank", "accelerate": "--machine_rank"}[argv[0]]
        addr_flag = "--main_process_ip" if argv[0] == "accelerate" else "--master_addr"
        assert flags[rank_flag] == str(rank) and flags[addr_flag] == HOSTS[0]
    (srun,) = (log.parent / (log.name + ".srun")).read_text().splitlines()
    assert srun.split() == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=0"]
    sbatch = (REPO / script.split("/")[0] / "scripts" / "slurm.sbatch").read_text()
    for line in ("#SBATCH --ntasks-per-node=1", "#SBATCH --signal=B:USR1@120", "#SBATCH --requeue"):
        assert line in sbatch


@pytest.mark.parametrize("job", [1, 9_999, 45_536, 99_999, 2**31 - 1])
def test_slurm_default_port_is_a_usable_port(job, stubs):
    """20000 + job id mod 10000 lies in 20000..29999 for any job id: a port the launchers accept, and
    above the privileged ones (a larger modulus would pass 65535 for job ids such as 99999)."""
    env, log = stubs
    proc = _sbatch("LLaMA-2", "LLaMA-2/scripts/frozen_7b.sh", _job_env(env, SLURM_JOB_ID=job))
    assert proc.returncode == 0, proc.stderr
    ports = {c["env"]["MASTER_PORT"] for c in _calls(log)}
    assert len(ports) == 1 and 1024 <= int(ports.pop()) < 65536


@pytest.mark.parametrize("script", TRAINING)
def test_slurm_knows_every_scripts_run_directory(script, stubs):
    env, log = stubs
    proc = _sbatch(script.split("/")[0], script, _job_env(env, SLURM_JOB_NUM_NODES=1))
    assert proc.returncode == 0, proc.stderr
    (call,) = _calls(log)
    output_dir = call["argv"][call["argv"].index("--output-dir") + 1]
    assert f"run directory {output_dir}:" in proc.stderr


@pytest.mark.parametrize("script", sorted(str(p.relative_to(REPO)) for p in REPO.glob("*/scripts/*.sh")
                                    if "source scripts/nodes.sh" in p.read_text()))
def test_every_launch_script_names_its_run_directory_without_launching(script, stubs):
    """PRINT_OUTPUT_DIR=1 (scripts/nodes.sh): the script prints OUT, else its default (an evaluation script without
    one: an empty line), and starts nothing. The default itself: test_slurm_knows_every_scripts_run_directory."""
    env, log = stubs
    for extra, expected in (({}, None), ({"OUT": "/shared/run"}, "/shared/run\n")):
        proc = subprocess.run(["bash", script], cwd=REPO, env={**env, **extra, "PRINT_OUTPUT_DIR": "1"},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.count("\n") == 1, (proc.returncode, proc.stdout, proc.stderr)
        assert expected is None or proc.stdout == expected
    assert not log.exists()  # no launcher started


def test_slurm_refuses_a_script_that_cannot_name_its_run_directory(stubs):
    env, log = stubs
    proc = _sbatch("LLaMA-2", "LLaMA-2/scripts/alpaca_chat_7b.sh", _job_env(env))
    assert proc.returncode == 2 and "does not source scripts/nodes.sh" in proc.stderr, proc.stderr
    assert not log.exists()


def test_slurm_resume_rule(stubs, tmp_path):
    env, log = stubs
    script = "LLaMA-2/scripts/frozen_7b.sh"
    out = tmp_path / "run"

    def argv(*args, **extra) -> list[str]:
        log.unlink(missing_ok=True)
        proc = _sbatch("LLaMA-2", script, _job_env(env, OUT=out, **extra), *args)
        assert proc.returncode == 0, proc.stderr
        first, second = (c["argv"][c["argv"].index("LLaMA-2/train.py"):] for c in _calls(log))
        assert first == second  # the same arguments on both nodes
        return first

    assert "--resume" not in argv()  # a fresh run
    (out / "checkpoint-5").mkdir(parents=True)
    assert "--resume" not in argv()  # a checkpoint without its COMPLETE manifest is not one
    (out / "checkpoint-5" / "COMPLETE").write_text("{}")
    assert argv("x=1")[-2:] == ["x=1", "--resume"]
    assert argv("--resume").count("--resume") == 1
    assert "--overwrite" in argv("--overwrite") and "--resume" not in argv("--overwrite")  # the first start
    requeued = argv("--overwrite", SLURM_RESTART_COUNT=1)  # a requeued job continues its own run
    assert "--overwrite" not in requeued and requeued[-1] == "--resume"


@pytest.mark.parametrize("step_ends_in_the_trap", [False, True])
def test_slurm_usr1_stops_every_rank_and_requeues(stubs, step_ends_in_the_trap, tmp_path):
    """The job's status is the step's (143), however quickly the step ends after the trap's SIGTERM. The second
    case makes the fast end certain: the job shell's `kill -TERM` of the step returns only 3 s later, by
    which time the step has exited, so the job shell must still collect its status, not the 138 of the
    `wait` that USR1 interrupted."""
    env, log = stubs
    extra = {}
    if step_ends_in_the_trap:
        slow = tmp_path / "slow_kill.sh"
        slow.write_text('kill() { builtin kill "$@"; local s=$?; [ "$1" != -TERM ] || [ -z "${step:-}" ] || sleep 3; return $s; }\n')
        extra["BASH_ENV"] = slow
    job = subprocess.Popen(["bash", "GPT_2/scripts/slurm.sbatch", "GPT_2/scripts/scratch_tempnet.sh"], cwd=REPO,
                           env=_job_env(env, STUB_WAIT=1, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.time() + 120  # a loaded machine starts python slowly
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) == 2):
        time.sleep(0.1)
    assert log.exists() and len(log.read_text().splitlines()) == 2, "the launchers did not start"
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 sends 120 s before the time limit
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 143, stderr
    terminated = sorted(r["terminated"] for r in _calls(log) if "terminated" in r)
    assert terminated == ["0", "1"]  # SIGTERM (which the launchers forward) reached both nodes' launchers
    assert (log.parent / (log.name + ".scontrol")).read_text().splitlines() == [f"requeue {JOB}"]


def test_slurm_usr1_before_the_step_starts_requeues_without_starting_it(stubs):
    env, log = stubs
    proc = _sbatch("GPT_2", "GPT_2/scripts/scratch_tempnet.sh", _job_env(env, STUB_USR1=1))
    assert proc.returncode == 143 and "slurm: USR1, stopping the run" in proc.stderr, (proc.returncode, proc.stderr)
    assert not log.exists()  # no launcher started
    assert (log.parent / (log.name + ".scontrol")).read_text().splitlines() == [f"requeue {JOB}"]


def test_slurm_refuses_to_run_outside_a_job(stubs):
    env, _ = stubs
    proc = _sbatch("GPT_2", "GPT_2/scripts/scratch_tempnet.sh", env)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: SLURM_JOB_ID is not set: submit this with sbatch"
    proc = _sbatch("GPT_2", "GPT_2/scripts/nope.sh", _job_env(env))
    assert proc.returncode == 2 and "error: launch script GPT_2/scripts/nope.sh not found" in proc.stderr
