"""Two gloo processes equal one process on the same global batch for isogclr_tempnet: losses, every
gradient of the model and the TempNets, and the per-sample state after several steps (augmentation
and dropout off: their random streams differ per rank). Then the real command line under torchrun."""

import pytest
import torch
import torch.multiprocessing as mp

from bimodal_runs import DEBUG, checkpoint, metrics, run_main, run_torchrun, tensors
from helpers import free_port

STEPS = 3
NO_RANDOMNESS = ["loss=isogclr_tempnet", "data.augment=false", "tempnet.dropout=0.0",
                 "model.text.config_overrides.dropout=0.0", "model.text.config_overrides.attention_dropout=0.0",
                 "model.image.kwargs.proj_drop_rate=0.0"]


def _steps(out, overrides):
    """Build the run as train.py does and take STEPS steps; per step the metrics and every gradient."""
    from tempnet.config import load_config
    from tempnet.train.clip_config import BimodalConfig

    from tempnet.train.clip_trainer import ClipRun

    cfg = load_config(BimodalConfig, DEBUG, overrides)
    r = ClipRun(cfg, out, torch.device("cpu"))
    r.dataset.set_epoch(0)
    r.sampler.set_epoch(0)
    record = []
    for step, batch in zip(range(STEPS), r.loader):
        m = r.step(batch)
        grads = {f"model.{k}": p.grad.clone() for k, p in r.model.named_parameters() if p.grad is not None}
        grads.update({f"tempnets.{k}": p.grad.clone() for k, p in r.tempnets.named_parameters()})
        record.append({"metrics": {k: float(v) for k, v in m.items()}, "grads": grads})
    state = {k: v.clone() for k, v in r.criterion.state_dict().items()}
    return record, state


def _worker(rank, port, out, path):
    import os

    from tempnet import distributed as tdist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    tdist.init_from_env("gloo")
    try:
        torch.save(_steps(out, [*NO_RANDOMNESS, "train.batch_size=16"]), f"{path}.{rank}")
    finally:
        tdist.destroy()


def _group_rel(a: dict, b: dict, prefix: str) -> tuple[float, str]:
    """Largest |a - b| over a whole parameter group (model or TempNets), relative to the largest gradient
    of that group; and the parameter where it sits.

    Why this scale: 2 processes sum the same terms in another order, so each entry differs by float32
    rounding of a sum, i.e. by a few ulps of the *terms* summed, not of the result. An entry whose terms
    cancel (a TempNet's scaler, an attention key bias) can differ by 1e-4 of itself on one BLAS and 1e-5
    on another; relative to the group's largest gradient the rounding is bounded by ~n * eps (n ~ 32
    samples x a few layers, eps = 1.2e-7), i.e. ~1e-6, whatever the machine.
    """
    keys = [k for k in b if k.startswith(prefix)]
    scale = max(float(b[k].abs().max()) for k in keys)
    worst = max((float((a[k] - b[k]).abs().max()), k) for k in keys)
    return worst[0] / scale, worst[1]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """The one-process run first, in this process; then the 2 ranks are forked from it (they start with its
    imports done instead of importing torch, timm and transformers again; each seeds and builds its own run)."""
    data = tmp_path / "data"
    one, one_state = _steps(data, [*NO_RANDOMNESS, "train.batch_size=32"])
    mp.start_processes(_worker, args=(free_port(), data, str(tmp_path / "ranks")), nprocs=2, start_method="fork")
    seen = {"loss": 0.0, "grad": 0.0, "state": 0.0}
    for rank in range(2):
        two, two_state = torch.load(tmp_path / f"ranks.{rank}", weights_only=False)
        for step, (a, b) in enumerate(zip(two, one)):
            for key in ("loss", "contrastive", "temperature", "tau_image", "tau_text", "grad_norm", "grad_norm_tempnet"):
                assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-5, abs=1e-7), (rank, step, key)
            assert a["grads"].keys() == b["grads"].keys() and len(a["grads"]) > 20
            for group in ("model.", "tempnets."):
                rel, where = _group_rel(a["grads"], b["grads"], group)
                seen["grad"] = max(seen["grad"], rel)
                assert rel < 2e-5, f"rank {rank} step {step}: gradient {where} differs by {rel:.2e} of the group's max"
            seen["loss"] = max(seen["loss"], abs(a["metrics"]["loss"] - b["metrics"]["loss"]))
        for key, value in one_state.items():  # s, b, seen of images and texts, indexed by dataset id
            diff = float((two_state[key].float() - value.float()).abs().max())
            assert diff <= 1e-4 * float(value.float().abs().max()) + 1e-6, f"{key} differs by {diff:.2e}"
            seen["state"] = max(seen["state"], diff)
        assert int(one_state["image_state.seen"].sum()) == STEPS * 32
    print(f"2 vs 1 process, {STEPS} steps: max |loss diff| {seen['loss']:.2e}, max relative gradient diff "
          f"{seen['grad']:.2e}, max |per-sample state diff| {seen['state']:.2e}")


@pytest.mark.slow
def test_torchrun_command_line(tmp_path):
    """`torchrun --nproc_per_node 2 Bimodal-CL/train.py ...` logs the same global-batch metrics as one process,
    writes one checkpoint with every rank's RNG state and the same per-sample state."""
    common = [*NO_RANDOMNESS, "train.epochs=1"]
    run_torchrun(2, tmp_path / "two", *common, "train.batch_size=16")
    run_main(tmp_path / "one", *common, "train.batch_size=32")
    two, one = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 11))
    for a, b in zip(two, one):
        for key in ("loss", "grad_norm", "grad_norm_tempnet", "tau_image"):
            assert a[key] == pytest.approx(b[key], rel=1e-3), (a["step"], key)
    (_, state2), (_, state1) = checkpoint(tmp_path / "two", 10), checkpoint(tmp_path / "one", 10)
    assert state2["world_size"] == 2 and (tmp_path / "two" / "checkpoint-10" / "rng_state_1.pt").is_file()
    for key, value in tensors(state1["criterion"]).items():
        assert torch.allclose(tensors(state2["criterion"])[key].float(), value.float(), rtol=1e-3, atol=1e-4), key
    assert (tmp_path / "two" / "eval.json").is_file()
