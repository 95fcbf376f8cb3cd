"""Plot the robust next-token loss against tau for one position, for several KL budgets rho.

The minimising tau of tau * log((1/V) sum_k exp((z_k - z_y)/tau)) + tau * rho is where
KL(softmax(z / tau) || uniform) = rho: the figure marks each minimiser and prints that KL.

    python scripts/plot_dro_identity.py --out images/dro_identity.png
"""

from __future__ import annotations

import argparse

import torch

from tempnet.losses import dro_lm_loss


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="images/dro_identity.png")
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen = torch.Generator().manual_seed(args.seed)
    z = (torch.randn(1, args.vocab, generator=gen, dtype=torch.float64) * 3)  # [1, V]
    y = torch.tensor([int(z.argmax())])
    taus = torch.logspace(-1.3, 1.3, 400, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for rho in args.rhos:
        losses = torch.stack([dro_lm_loss(z, y, torch.tensor([t], dtype=torch.float64), rho) for t in taus])
        i = int(losses.argmin())
        p = torch.softmax(z[0] / taus[i], dim=0)
        kl = float((p * torch.log(p * args.vocab)).sum())
        ax.plot(taus, losses, label=f"rho={rho:g}: argmin tau={taus[i]:.2f}, KL={kl:.2f}")
        ax.plot([taus[i]], [losses[i]], "ko", markersize=4)
        print(f"rho={rho:g}  tau*={taus[i].item():.4f}  KL(softmax(z/tau*) || uniform)={kl:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("tau")
    ax.set_ylabel("robust loss")
    ax.set_title(f"DRO loss of one position (V={args.vocab}): the minimiser has KL = rho")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    from tempnet.errors import run_cli

    run_cli(main)
