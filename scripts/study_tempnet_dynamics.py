"""Does the LLM TempNet learn a personal tau? TempNet trained alone on logits of a known language.

Setting: the synthetic language of tempnet.data.synthetic_lm (a bigram source over V tokens whose
contexts have 1 to 64 plausible continuations). Each row is one position: logits
z = log((1 - eps) p_true + eps / V) + noise, label y ~ p_true drawn afresh every step. TempNet is
trained alone (Adam, full batch) on the robust loss dro_lm_loss(z, y, TempNet(z), rho), rho =
log V - gap. Its target is known per row: the DRO-optimal tau of z (KL(softmax(z/tau) || u) = rho).

Measured on held-out rows (fresh noise), with TempNet in eval mode: the spread of tau (std, p5,
p95), Spearman correlations with the true entropy and with the optimal tau, the regret (mean excess
of the expected robust loss over the per-row optimum) and the share of the best global tau's regret
that TempNet removes ("gain": 0 = no better than one global tau, 1 = the per-row optimum), and the
spread of the projection h across its M units (mean over rows of std_m h).

    python scripts/study_tempnet_dynamics.py --out images/tempnet_dynamics.png
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from tempnet import TempNet
from tempnet.data.synthetic_lm import SyntheticLanguage, dro_optimal_tau
from tempnet.losses import dro_lm_loss


def make_rows(lang: SyntheticLanguage, n: int, rng: np.random.Generator, smooth: float, noise: float):
    """n positions: (contexts [n], p_true [n, V], logits z [n, V]); contexts drawn uniformly."""
    ctx = rng.integers(0, lang.num_contexts, n)
    p = lang.distributions(ctx)
    z = np.log((1 - smooth) * p + smooth / lang.vocab_size) + noise * rng.standard_normal(p.shape)
    return ctx, p, z


def expected_loss(z: torch.Tensor, tau: torch.Tensor, rho: float) -> torch.Tensor:
    """E_{y ~ p}[robust loss] up to -E_p[z_y], which does not depend on tau: [N] float64.

    tau * log((1/V) sum_k exp((z_k - z_y)/tau)) + tau * rho = tau * logsumexp(z/tau) - z_y + tau*(rho - log V).
    """
    tau = tau.reshape(-1, 1).double()
    return (tau * torch.logsumexp(z / tau, dim=1, keepdim=True)).squeeze(1) + tau.squeeze(1) * (rho - math.log(z.shape[1]))


class Setting:
    """Train and held-out rows, their truth, and the baselines' regrets."""

    def __init__(self, args, gap: float):
        self.lang = SyntheticLanguage(args.vocab, order=1, seed=args.seed)
        self.V, self.rho = args.vocab, math.log(args.vocab) - gap
        self.tau_min, self.tau_max = args.tau_min, args.tau_max
        rng = np.random.default_rng(args.seed + 1)
        _, p, z = make_rows(self.lang, args.rows, rng, args.smooth, args.noise)
        ctx_v, _, z_v = make_rows(self.lang, args.eval_rows, rng, args.smooth, args.noise)
        self.z = torch.tensor(z, dtype=torch.float32)
        self.cum = torch.tensor(np.cumsum(p, axis=1))  # for label sampling
        self.z_eval = torch.tensor(z_v, dtype=torch.float32)
        self.z_eval64 = torch.tensor(z_v)
        self.entropy = self.lang.context_entropy[ctx_v]
        if self.rho < math.log(self.V):
            self.tau_star = dro_optimal_tau(z_v, self.rho, self.tau_min, self.tau_max)
        else:  # rho >= log V: KL < rho at every tau, every row's optimum is tau_min
            self.tau_star = np.full(args.eval_rows, self.tau_min)
        self.opt_loss = expected_loss(self.z_eval64, torch.tensor(self.tau_star), self.rho)
        grid = np.exp(np.linspace(math.log(self.tau_min), math.log(self.tau_max), 400))
        regrets = [self.regret(np.full(args.eval_rows, g)) for g in grid]
        self.global_tau, self.global_regret = float(grid[int(np.argmin(regrets))]), float(min(regrets))

    def regret(self, tau: np.ndarray) -> float:
        return float((expected_loss(self.z_eval64, torch.tensor(tau), self.rho) - self.opt_loss).mean())

    def labels(self, gen: torch.Generator) -> torch.Tensor:
        u = torch.rand(self.cum.shape[0], 1, generator=gen, dtype=torch.float64)
        return (self.cum < u).sum(dim=1).clamp(max=self.V - 1)


def spearman(a, b) -> float:
    return float(spearmanr(a, b)[0]) if len(np.unique(a)) > 1 and len(np.unique(b)) > 1 else float("nan")


def train(setting: Setting, *, lr: float, steps: int, every: int, seed: int, sorted_input: bool = False,
          first_layer_std: float | None = None, **tempnet_kwargs) -> list[dict]:
    """Train one TempNet alone on the setting; return the held-out metrics every `every` steps."""
    torch.manual_seed(seed)
    net = TempNet(setting.V, 256, setting.tau_min, setting.tau_max, **tempnet_kwargs)
    if first_layer_std is not None:  # candidate: a first layer whose output varies across rows
        with torch.no_grad():
            net.proj[0].weight.normal_(0.0, first_layer_std)
    prep = (lambda z: z.sort(dim=-1, descending=True).values) if sorted_input else (lambda z: z)
    z_train, z_eval = prep(setting.z), prep(setting.z_eval)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            net.eval()
            with torch.no_grad():
                tau = net(z_eval).squeeze(-1).double().numpy()
                x = torch.nn.functional.normalize(z_eval - z_eval.amax(-1, keepdim=True), dim=-1)
                h_spread = float(net.proj(x).std(dim=-1).mean())
            net.train()
            regret = setting.regret(tau)
            history.append({"step": step, "mean": tau.mean(), "std": tau.std(), "p5": np.percentile(tau, 5),
                            "p95": np.percentile(tau, 95), "rH": spearman(tau, setting.entropy),
                            "rT": spearman(tau, setting.tau_star), "regret": regret,
                            "gain": 1.0 - regret / setting.global_regret if setting.global_regret > 1e-9 else float("nan"), "h_spread": h_spread, "tau": tau})
        if step == steps:
            break
        loss = dro_lm_loss(z_train, setting.labels(gen), net(z_train), setting.rho)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return history


def label_free_tau_gradient(setting: Setting) -> float:
    """max |dL/dtau| difference between two label draws (the tau-gradient is rho - KL: no label)."""
    grads = []
    for seed in (0, 1):
        tau = torch.full((setting.z.shape[0],), 1.0, requires_grad=True)
        y = setting.labels(torch.Generator().manual_seed(seed))
        dro_lm_loss(setting.z.double(), y, tau.double(), setting.rho, reduction="sum").backward()
        grads.append(tau.grad.clone())
    return float((grads[0] - grads[1]).abs().max())


ROW = "{:<34} {:>5} {:>6} {:>9} {:>6} {:>6} {:>7} {:>7} {:>7} {:>6} {:>8}"


def print_history(name: str, history: list[dict], report_steps) -> None:
    for rec in history:
        if rec["step"] in report_steps:
            print(ROW.format(name, rec["step"], f"{rec['mean']:.3f}", f"{rec['std']:.2e}", f"{rec['p5']:.3f}",
                             f"{rec['p95']:.3f}", f"{rec['rH']:+.3f}", f"{rec['rT']:+.3f}", f"{rec['regret']:.4f}",
                             f"{rec['gain']:+.2f}", f"{rec['h_spread']:.2e}"))
            name = ""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="images/tempnet_dynamics.png")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--rows", type=int, default=512, help="training positions (full batch)")
    parser.add_argument("--eval-rows", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--gap", type=float, default=2.0, help="log V - rho: the tempered entropy at the optimum")
    parser.add_argument("--tau-min", type=float, default=0.05)
    parser.add_argument("--tau-max", type=float, default=5.0)
    parser.add_argument("--smooth", type=float, default=0.01, help="eps of log((1-eps) p + eps/V)")
    parser.add_argument("--noise", type=float, default=0.5, help="std of the Gaussian noise on the logits")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()

    base = Setting(args, args.gap)
    print(f"V={args.vocab}, rho = log V - {args.gap} = {base.rho:.3f}, tau range [{args.tau_min}, {args.tau_max}], "
          f"{args.rows} training rows, {args.eval_rows} held-out rows")
    print(f"held-out truth: entropy {base.entropy.min():.2f}..{base.entropy.max():.2f} nats; DRO-optimal tau "
          f"p5 {np.percentile(base.tau_star, 5):.3f}, median {np.median(base.tau_star):.3f}, "
          f"p95 {np.percentile(base.tau_star, 95):.3f}, Spearman(tau*, entropy) {spearman(base.tau_star, base.entropy):+.3f}")
    print(f"best single tau {base.global_tau:.3f}: regret {base.global_regret:.4f} (the per-row optimum: 0)")
    print(f"tau-gradient of the robust loss, two label draws: max difference {label_free_tau_gradient(base):.1e}")

    steps, every = args.steps, max(args.steps // 60, 1)
    report = sorted({0, 100, 300, 1000, steps} & set(range(steps + 1)))
    runs = [  # (name, train kwargs)
        ("paper (centred), lr 1e-4", dict(lr=1e-4)),
        ("paper (centred), lr 1e-3", dict(lr=1e-3)),
        ("paper (centred), lr 1e-2", dict(lr=1e-2)),
        ("centred, dropout 0, lr 1e-2", dict(lr=1e-2, dropout=0.0)),
        ("centred, 1st layer std 1, lr 1e-2", dict(lr=1e-2, first_layer_std=1.0)),
        ("centred, sorted logits, lr 1e-2", dict(lr=1e-2, sorted_input=True)),
        ("uncentred, lr 1e-4", dict(lr=1e-4, pooling="uncentred")),
        ("uncentred, lr 1e-3", dict(lr=1e-3, pooling="uncentred")),
        ("uncentred, lr 1e-2", dict(lr=1e-2, pooling="uncentred")),
    ]
    print("\n" + ROW.format("run", "step", "mean", "std", "p5", "p95", "rho(H)", "rho(t*)", "regret", "gain",
                            "h-spread"))
    results = {}
    for name, kwargs in runs:
        results[name] = train(base, steps=steps, every=every, seed=args.seed, **kwargs)
        print_history(name, results[name], report)

    short = min(1000, steps)
    print(f"\nrho against log V (lr 1e-2, {short} steps): rho = log V - gap")
    print(ROW.format("run", "step", "mean", "std", "p5", "p95", "rho(H)", "rho(t*)", "regret", "gain", "h-spread"))
    for gap in (4.0, 0.5, 0.0):
        setting = Setting(args, gap)
        print(f"gap {gap}: rho {setting.rho:.3f}, tau* p5 {np.percentile(setting.tau_star, 5):.3f} "
              f"p95 {np.percentile(setting.tau_star, 95):.3f}, best single tau {setting.global_tau:.3f}")
        for pooling in ("centred", "uncentred"):
            hist = train(setting, lr=1e-2, steps=short, every=short, seed=args.seed, pooling=pooling)
            print_history(f"  {pooling}, gap {gap}", hist, {short})
    print(f"\ntotal {time.time() - start:.0f} s")
    if args.out:
        plot(results, base, args.out)


def plot(results: dict, base: Setting, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, hist in results.items():
        steps = [r["step"] for r in hist]
        style = "-" if "uncentred" in name else "--"
        axes[0].plot(steps, [max(r["std"], 1e-8) for r in hist], style, label=name)
        axes[1].plot(steps, [r["gain"] for r in hist], style, label=name)
    axes[0].set_yscale("log")
    axes[0].set_title("spread of tau across held-out rows (std)")
    axes[1].set_ylim(-0.5, 1.05)
    axes[1].set_title("share of the personal-tau gain (0 = one global tau)")
    for ax in axes[:2]:
        ax.set_xlabel("Adam step")
    axes[1].legend(fontsize=7)
    for name, marker in (("paper (centred), lr 1e-2", "x"), ("uncentred, lr 1e-2", ".")):
        axes[2].scatter(base.tau_star, results[name][-1]["tau"], s=6, marker=marker, label=name)
    lim = [base.tau_star.min(), base.tau_star.max()]
    axes[2].plot(lim, lim, "k:", linewidth=1)
    axes[2].set_xlabel("DRO-optimal tau of the row")
    axes[2].set_ylabel("TempNet's tau (end of training)")
    axes[2].legend(fontsize=7)
    axes[2].set_title("learned vs optimal tau")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
