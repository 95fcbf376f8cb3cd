"""One optimizer step of each LLM engine (DDP, DeepSpeed ZeRO-2, accelerate) against a hand computation.

The run: GPT_2 debug, one step of the global batch of 4 (1 process x 2 micro-batches x accumulation 2,
or 2 processes x 2), no warm-up (the first step has the full lr), no clipping. The hand computation,
in this process with no engine: the same initial model (the trainer's seed), the same 4 examples (the
first 4 of the seeded permutation, see StepBatchSampler), one forward over all of them and autograd.
Then AdamW's first step is sign-like, m_hat = g and v_hat = g^2 after bias correction:

    p1 = p0 * (1 - lr * wd) - lr * g / (|g| + eps)

with lr and wd of the parameter's group (model or TempNet; matrices decay, vectors not). eps is 1e-3
instead of 1e-8, so that for entries with |g| near or below 1e-3 the update depends on the
gradient's scale, not only on its sign. The logged grad_norm must be |g|: an engine that doubles the
gradient (e.g. dropping the 1 / accum of accumulation) fails there first. Measured here: every weight
within 6e-8 of the hand step (tolerance 2e-6), grad_norm equal to 1e-5 relative, for all six runs.

DDP with 2 processes runs micro-batch 1 (2 processes x accumulation 2) for 4 steps, saving every step: its
first step (checkpoint-1, the first logged row) is the hand check above, and the same run is compared step by
step with 1 process x accumulation 4 (test_two_processes_with_accumulation_match_one_with_more, moved here from
test_lm_gpt2.py): one launch serves both. DDP with 2 processes and no accumulation is compared with 1 process in
test_lm_families.py.

DeepSpeed with 2 processes, moved here from test_lm_gpt2.py: ZeRO-2 and ZeRO-3 for 8 steps of the debug config
(global batch 4 = 2 micro x 2 ranks) against the 1-process DDP run (accumulation 2), to 1e-5 absolute on loss
and tau_mean, 1e-5 relative on grad_norm (float32 reductions in another order; measured ~2e-6 or exact), and the
gathered ZeRO-3 weights against the DDP run's. The one-step ZeRO-2 hand check and those two runs are one launch of
the `deepspeed` launcher (it passes --local_rank) with 2 processes, the three trainings in turn in the same
processes (lm_runs.several_runs_cmd).
"""

from __future__ import annotations

import pytest
import torch

from helpers import accelerate_launch, deepspeed_launcher, run, torchrun
from lm_runs import REPO, assert_runs_match, metrics, several_runs_cmd, train_cmd, train_here

pytestmark = pytest.mark.slow


EPS, TEMPNET_WD = 1e-3, 0.05
TOL = 1e-5  # the multi-step comparisons of 2 processes with 1 (float32 reductions in another order)
ONE_STEP = ("train.max_steps=1", "optim.warmup_steps=0", f"optim.eps={EPS}", "optim.grad_clip=0",
            f"tempnet.weight_decay={TEMPNET_WD}")
DEEPSPEED = ("engine.name=deepspeed", "engine.deepspeed_config=GPT_2/configs/ds_zero2.json")
#: DDP x 2: micro-batch 1 (accumulation 2 on each rank: rank 1's micro-batches beyond the first and the 1 / accum
#: scaling on a rank > 0), 4 steps, a checkpoint (model.safetensors) after every step, all kept.
DDP_ACCUM = ("train.max_steps=4", "train.micro_batch_size=1", "train.save_every=1", "train.keep_last=0")


def _command(engine: str, nproc: int, out) -> list:
    """The launch of 2 processes (DeepSpeed's: the deepspeed_two fixture)."""
    if engine == "ddp":  # (2 processes: the ddp_two fixture)
        return [*torchrun(nproc), *train_cmd("GPT_2", out, *ONE_STEP, *DDP_ACCUM)]
    return [*accelerate_launch(nproc, "--multi_gpu", "--num_machines", "1", "--mixed_precision", "no",
                               "--dynamo_backend", "no"),
            *train_cmd("GPT_2", out, *ONE_STEP, "engine.name=accelerate")]


def hand_step(out):
    """(initial parameters, their gradient of the global batch's mean loss, config) computed in this
    process from the run's resolved config (no engine, no trainer loop)."""
    from tempnet.config import load_config
    from tempnet.data.lm import build_token_cache, open_token_cache
    from tempnet.train.lm_config import LMTrainConfig
    from tempnet.train.lm_model import build_model, load_tokenizer

    cfg = load_config(LMTrainConfig, out / "config.yaml")
    tokenizer = load_tokenizer(cfg)
    torch.manual_seed(cfg.train.seed)  # the trainer's rule: the same initial weights in every run and rank
    model = build_model(cfg, tokenizer)
    dataset = open_token_cache(build_token_cache(cfg.data, tokenizer, out / "token_cache"), cfg.data)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.train.seed))
    items = [dataset[int(i)] for i in order[:cfg.train.global_batch_size]]
    batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}  # [4, L] each
    assert (batch["labels"] != -100).all()  # packed blocks: the mean over the batch = the mean of micro-batch means
    p0 = {n: p.detach().clone().double() for n, p in model.named_parameters()}
    model(**batch).loss.backward()
    grads = {n: p.grad.double() for n, p in model.named_parameters()}
    return p0, grads, cfg


def adamw_first_step(p0: dict, grads: dict, cfg) -> dict:
    """p0 * (1 - lr wd) - lr g / (|g| + eps), lr / wd by group (TempNet or model; matrices decay)."""
    out = {}
    for name, p in p0.items():
        head = name.startswith("tempnet.")
        lr = cfg.tempnet.lr if head else cfg.optim.lr
        wd = (cfg.tempnet.weight_decay if head else cfg.optim.weight_decay) if p.dim() >= 2 else 0.0
        g = grads[name]
        out[name] = p * (1 - lr * wd) - lr * g / (g.abs() + cfg.optim.eps)
    return out


@pytest.fixture(scope="module")
def ddp_two(tmp_path_factory):
    """The 2-process DDP run (torchrun, micro-batch 1: accumulation 2 on each rank, 4 steps, every checkpoint
    kept): its first step for the hand check, all 4 for the comparison with 1 process x accumulation 4."""
    out = tmp_path_factory.mktemp("ddp_two")
    run(_command("ddp", 2, out))
    return out


STEPS = 8  # the multi-step DeepSpeed comparisons


@pytest.fixture(scope="module")
def deepspeed_two(tmp_path_factory):
    """One launch of the `deepspeed` launcher with 2 processes running, in turn: the one-step ZeRO-2 run of the
    hand check, and ZeRO-2 and ZeRO-3 (every parameter partitioned: persistence 0) for 8 steps of the debug
    config. name -> output dir."""
    root = tmp_path_factory.mktemp("deepspeed_two")
    outs = {name: root / name for name in ("one_step", "zero2", "zero3")}
    eight = lambda stage: (f"train.max_steps={STEPS}", "engine.name=deepspeed",  # noqa: E731
                           f"engine.deepspeed_config=GPT_2/configs/ds_zero{stage}.json")
    argvs = [train_cmd("GPT_2", outs["one_step"], *ONE_STEP, *DEEPSPEED)[1:],
             train_cmd("GPT_2", outs["zero2"], *eight(2))[1:], train_cmd("GPT_2", outs["zero3"], *eight(3))[1:]]
    run([*deepspeed_launcher(2), *several_runs_cmd("GPT_2", root, *argvs)], timeout=600)
    return outs


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory):
    """The DeepSpeed runs' 1-process DDP run (accumulation 2), main(argv) in this process."""
    out = tmp_path_factory.mktemp("ddp_reference")
    train_here("GPT_2", out, f"train.max_steps={STEPS}")
    return out


def _train(engine: str, nproc: int, out) -> None:
    """The run of 1 process with each engine is the trainer's main(argv) here (lm_runs.train_here: the same numbers
    as `python GPT_2/train.py`, which other tests run as a subprocess; the trainer tears down the process group
    DeepSpeed needs, accelerate's shared singleton state is reset afterwards); every launcher runs as a subprocess
    (`accelerate launch` with 2 processes here, in test_lm_llama1.py and test_lm_family_engines.py)."""
    if (engine, nproc) == ("ddp", 1):
        train_here("GPT_2", out, *ONE_STEP)
    elif (engine, nproc) == ("accelerate", 1):
        from accelerate.state import AcceleratorState, GradientState

        try:
            train_here("GPT_2", out, *ONE_STEP, "engine.name=accelerate")
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
    elif (engine, nproc) == ("deepspeed", 1):
        ds_config = REPO / "GPT_2/configs/ds_zero2.json"  # (absolute: in-process, the cwd may be anywhere)
        train_here("GPT_2", out, *ONE_STEP, DEEPSPEED[0], f"engine.deepspeed_config={ds_config}")
    else:
        run(_command(engine, nproc, out))


def _weights_after_step_one(out, ddp2: bool) -> dict:
    """The run's weights after its first optimizer step: final/ of a 1-step run, or checkpoint-1 of the 4-step
    DDP x 2 run (the whole state dict; a tied weight is saved under both names)."""
    if ddp2:
        from safetensors.torch import load_file

        return load_file(out / "checkpoint-1" / "model.safetensors")
    from tempnet.integrations.hf import tempnet_model_from_pretrained

    return {k: v.detach() for k, v in tempnet_model_from_pretrained(out / "final").named_parameters()}


@pytest.mark.parametrize("engine,nproc", [("ddp", 1), ("deepspeed", 1), ("accelerate", 1), ("ddp", 2),
                                          ("deepspeed", 2), ("accelerate", 2)])
def test_one_step_equals_the_hand_computed_adamw_step(engine, nproc, tmp_path, request):
    ddp2 = (engine, nproc) == ("ddp", 2)
    if ddp2:
        tmp_path = request.getfixturevalue("ddp_two")
    elif (engine, nproc) == ("deepspeed", 2):
        tmp_path = request.getfixturevalue("deepspeed_two")["one_step"]
    else:
        _train(engine, nproc, tmp_path)
    p0, grads, cfg = hand_step(tmp_path)
    micro = 1 if ddp2 else 2
    assert cfg.train.micro_batch_size == micro and cfg.train.accumulation_steps(nproc) == 4 // (micro * nproc)
    assert cfg.optim.eps == EPS
    row = metrics(tmp_path)[0]
    assert row["step"] == 1 and len(metrics(tmp_path)) == (4 if ddp2 else 1)
    hand_norm = torch.sqrt(sum((g ** 2).sum() for g in grads.values())).item()
    assert row["grad_norm"] == pytest.approx(hand_norm, rel=1e-5), (engine, nproc)
    expected = adamw_first_step(p0, grads, cfg)
    got = _weights_after_step_one(tmp_path, ddp2)
    assert (got.keys() >= expected.keys() if ddp2 else got.keys() == expected.keys())
    assert any(k.startswith("tempnet.") for k in expected)
    moved = max(float((expected[k] - p0[k]).abs().max()) for k in p0)
    assert moved > 1e-3  # the step is visible at this tolerance
    worst = max((float((got[name].double() - want).abs().max()), name) for name, want in expected.items())
    print(f"{engine} x{nproc}: grad_norm {row['grad_norm']:.6g} (hand {hand_norm:.6g}), largest move {moved:.2e}, "
          f"largest |weights - hand step| {worst[0]:.2e} ({worst[1]})")
    assert worst[0] < 2e-6, f"{engine} x{nproc}: {worst[1]} is {worst[0]:.2e} from the hand-computed AdamW step"


def test_two_processes_with_accumulation_match_one_with_more(ddp_two, tmp_path):
    """World 2 x accumulation 2 = world 1 x accumulation 4 (micro-batch 1, global batch 4, 4 steps; moved here
    from test_lm_gpt2.py, on the ddp_two run): rank 1's micro-batches beyond the first and the 1 / accum scaling
    on a rank > 0 are only exercised here. The logged metrics agree to TOL and the final weights to float32
    rounding."""
    from safetensors.torch import load_file

    train_here("GPT_2", tmp_path, *ONE_STEP, *DDP_ACCUM)
    a, b = metrics(ddp_two), metrics(tmp_path)
    assert [r["step"] for r in a] == [1, 2, 3, 4]
    assert_runs_match(a, b, TOL)
    assert (ddp_two / "checkpoint-4" / "rng_state_1.pt").exists()  # one RNG file per rank
    wa, wb = (load_file(d / "final" / "model.safetensors") for d in (ddp_two, tmp_path))
    assert wa.keys() == wb.keys() and any(k.startswith("tempnet.") for k in wa)
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < 1e-5, f"final weights differ by {worst:.2e}"


def test_deepspeed_zero2_two_processes_match_ddp(deepspeed_two, ddp_reference):
    a, b = metrics(ddp_reference), metrics(deepspeed_two["zero2"])
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert_runs_match(a, b, TOL)
    ckpt = deepspeed_two["zero2"] / f"checkpoint-{STEPS}"
    assert any(p.name.endswith("optim_states.pt") for p in ckpt.iterdir())  # DeepSpeed's own


def test_deepspeed_zero3_two_processes_match_ddp(deepspeed_two, ddp_reference):
    """ZeRO-3 under the `deepspeed` launcher (it passes --local_rank), every parameter partitioned."""
    a, b = metrics(ddp_reference), metrics(deepspeed_two["zero3"])
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert_runs_match(a, b, TOL)
    # the gathered ZeRO-3 weights written by save_pretrained equal the DDP run's
    from tempnet.integrations.hf import tempnet_model_from_pretrained

    ref = tempnet_model_from_pretrained(ddp_reference / "final").state_dict()
    z3 = tempnet_model_from_pretrained(deepspeed_two["zero3"] / "final").state_dict()
    assert ref.keys() == z3.keys()
    assert max((ref[k] - z3[k]).abs().max().item() for k in ref) < 1e-5
