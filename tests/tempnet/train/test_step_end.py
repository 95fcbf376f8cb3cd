"""What both trainers share per optimizer step: the protocol's step end (`Protocol.end_step`: guard -> check and
log -> progress -> save -> preempt, and what `hold` leaves to the loop) and the optimizer step
(`OptimizerStep`: several optimizers, each clipped by its own norm; fp16 skips a non-finite update)."""

import pytest
import torch

from tempnet.train.engines import OptimizerStep, Stepped
from tempnet.train.protocol import Protocol
from tempnet.train.signals import Preempted


class _Recorded(Protocol):
    """The protocol with its effects recorded in order (no files: save and check only note the call)."""

    def __init__(self, tmp_path, calls):
        super().__init__(tmp_path, "cpu", lambda path: None, lambda step: {}, None, 1)
        self.calls = calls
        outer = self

        class Logger:
            def log(self, step, metrics):
                outer.calls.append(("log", step))
                return {"step": step, **metrics}

            def advance(self):
                outer.calls.append(("advance",))

        self.logger = Logger()

    def after_step(self, step, *args):
        super().after_step(step, *args)
        self.calls.append(("after_step", step))

    def check(self):
        self.calls.append(("check",))

    def save(self, step):
        self.calls.append(("save", step))
        self.saved_step = step
        return self.out / f"checkpoint-{step}"


def test_the_step_end_runs_its_sequence_in_order(tmp_path):
    calls = []
    run = _Recorded(tmp_path, calls)
    assert run.end_step(1, torch.tensor(1.0), metrics=lambda: {"loss": 1.0}, save=True) == {"step": 1, "loss": 1.0}
    assert calls == [("after_step", 1), ("check",), ("log", 1), ("advance",), ("save", 1)]
    calls.clear()
    assert run.end_step(2, torch.tensor(1.0)) is None  # not a logging step, no save asked
    assert calls == [("after_step", 2), ("advance",)]


@pytest.mark.parametrize("hold", [False, True])
def test_the_clock_and_a_signal_act_unless_the_loop_holds_the_step(tmp_path, hold):
    calls = []
    run = _Recorded(tmp_path, calls)
    run.minutes, run._clock = 1, lambda: run._last_save + 60  # a save is due by the wall clock
    run.preemption.signum = 15
    if hold:  # CLIP's epoch end: evaluated, saved and preempted by the loop afterwards
        run.end_step(3, torch.tensor(1.0), hold=True)
        assert calls == [("after_step", 3), ("advance",)] and run.time_due and run.signum == 15
        return
    with pytest.raises(Preempted):
        run.end_step(3, torch.tensor(1.0))
    assert calls == [("after_step", 3), ("advance",), ("save", 3)]  # the preemption reuses the save of this step


def _two_layer_grads(scale: float = 1.0):
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
    loss = b(a(torch.randn(8, 4))).pow(2).mean() * scale
    return a, b, loss


def test_each_optimizer_is_clipped_by_its_own_norm_and_only_given_schedules_move(tmp_path):
    a, b, loss = _two_layer_grads(100.0)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=1, gamma=0.5)
    update = OptimizerStep(torch.device("cpu"), "fp32", [Stepped(opt_a, sched_a, clip=1.0), Stepped(opt_b)])
    update.backward(loss)
    grads_b = [p.grad.clone() for p in b.parameters()]
    before_a = [p.detach().clone() for p in a.parameters()]
    before_b = [p.detach().clone() for p in b.parameters()]
    norm_a, norm_b = update.step()
    assert float(norm_a) > 1.0  # measured before clipping
    assert float(norm_b) == pytest.approx(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads_b]))))
    moved_a = torch.cat([(p.detach() - q).flatten() for p, q in zip(a.parameters(), before_a)])
    assert float(moved_a.norm()) == pytest.approx(0.1 * 1.0, rel=1e-4)  # lr x the clipped norm
    for p, q, g in zip(b.parameters(), before_b, grads_b):  # unclipped: lr x its own gradient
        assert torch.allclose(p.detach(), q - 0.1 * g)
    assert opt_a.param_groups[0]["lr"] == 0.05 and opt_b.param_groups[0]["lr"] == 0.1
    assert all(p.grad is not None for p in [*a.parameters(), *b.parameters()])  # kept until zero_grad
    update.zero_grad()
    assert all(p.grad is None for p in [*a.parameters(), *b.parameters()])
    assert update.skipped is None  # no loss scaling in fp32


def test_fp16_skips_the_update_of_an_optimizer_with_non_finite_gradients_and_says_so():
    a, b, loss = _two_layer_grads()
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (a, b)]
    update = OptimizerStep(torch.device("cpu"), "fp16", [Stepped(o) for o in opts])
    update.backward(loss)
    next(a.parameters()).grad[0, 0] = float("inf")
    before = {m: [p.detach().clone() for p in m.parameters()] for m in (a, b)}
    update.step()
    assert bool(update.skipped)  # the scale dropped
    assert all(torch.equal(p.detach(), q) for p, q in zip(a.parameters(), before[a]))  # a: skipped
    assert not any(torch.equal(p.detach(), q) for p, q in zip(b.parameters(), before[b]))  # b's own check passed
    update.zero_grad()
    update.backward(sum(p.sum() for m in (a, b) for p in m.parameters()))  # finite: taken
    update.step()
    assert not bool(update.skipped) and not torch.equal(next(a.parameters()).detach(), before[a][0])
