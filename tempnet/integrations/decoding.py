"""Per-step temperatures as Hugging Face logits processors: TempNet and the decoding baselines.

Each processor divides the next-token scores [B, V] by a temperature [B, 1] computed from those
scores, so one `generate` harness compares them on equal terms:

    TempNetLogitsProcessor(tempnet)        tau = TempNet(z)            (a separately stored TempNet)
    FixedTemperatureLogitsProcessor(tau)   tau constant                (the usual baseline)
    EntropyDynamicTemperatureLogitsProcessor(t_min, t_max, exponent)
                                           T = t_min + (t_max - t_min) * (H / log n)^exponent
                                           (llama.cpp's dynatemp; n = number of candidate tokens)
    EDTLogitsProcessor(t0, n, theta)       T = t0 * n^(theta / H)      (EDT, Zhang et al. 2024)
    HiddenStateTemperatureLogitsProcessor(head, model)
                                           tau = head(h), h the model's last hidden state at the step
                                           (AutoDeco's temperature head, tempnet.integrations.hidden_head)

The sampling baselines users have today truncate after a fixed temperature T (tokens outside the kept set
get -inf, so they are for sampling, not for scoring):

    MinPLogitsProcessor(tau, min_p)        keep p >= min_p * max p         (transformers' MinPLogitsWarper)
    TopNSigmaLogitsProcessor(tau, n)       keep z >= max z - n * std(z)    (top-n-sigma, Tang et al. 2024)
    PLessLogitsProcessor(tau)              keep p >= sum_j p_j^2           (p-less sampling, hyperparameter-free)

H is the entropy (nats) of softmax(scores). Pass them in `generate(logits_processor=[...])`:
transformers runs them after its own penalties/masks and before temperature/top-k/top-p.
With `record=True` each processor keeps the temperature of every step in `history` ([B] per step).
`positions(input_ids, logits)` applies a processor to every position of a teacher-forced forward (how
lm-eval scores a rule: `tempnet.integrations.lm_eval.TempNetLM(logits_processor=...)`).
Greedy and sampling with the TempNet processor on a plain model match the TempNet wrapper model
exactly; beam search feeds processors log-probabilities, so there the wrapper is the exact method.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import LogitsProcessor

from tempnet.modules import FixedTemperature

__all__ = [
    "TemperatureLogitsProcessor", "TempNetLogitsProcessor", "FixedTemperatureLogitsProcessor",
    "EntropyDynamicTemperatureLogitsProcessor", "EDTLogitsProcessor", "HiddenStateTemperatureLogitsProcessor",
    "MinPLogitsProcessor", "TopNSigmaLogitsProcessor", "PLessLogitsProcessor", "entropy_of_scores", "MIN_TEMPERATURE",
]

#: The smallest temperature the dynamic baselines return (their formulas reach 0 for a one-hot distribution).
MIN_TEMPERATURE = 1e-4


def entropy_of_scores(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [B, V] (masked tokens at -inf) -> (entropy of softmax [B, 1] in nats, candidates n [B, 1])."""
    p = torch.softmax(scores.float(), dim=-1)
    entropy = torch.special.entr(p).sum(dim=-1, keepdim=True)  # entr(0) = 0, so masked tokens add nothing
    n = torch.isfinite(scores).sum(dim=-1, keepdim=True)
    return entropy, n


class TemperatureLogitsProcessor(LogitsProcessor):
    """Base class: scores / self.temperature(scores), optionally recording the temperatures."""

    def __init__(self, record: bool = False):
        self.record = record
        self.history: list[torch.Tensor] = []

    def temperature(self, scores: torch.Tensor) -> torch.Tensor:
        """scores [B, V] -> temperature [B, 1] float32 (> 0)."""
        raise NotImplementedError

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        tau = self.temperature(scores)  # [B, 1]
        if self.record:
            self.history.append(tau[:, 0].detach().float().cpu())
        return scores / tau.to(scores.device)

    def positions(self, input_ids: torch.LongTensor, logits: torch.Tensor) -> torch.Tensor:
        """Teacher-forced: ids [B, L], logits [B, L, V] -> processed [B, L, V], each position a row of its own
        whose input_ids is its own token (the context every processor here reads: the last token)."""
        b, length, v = logits.shape
        return self(input_ids.reshape(b * length, 1), logits.reshape(b * length, v)).reshape(b, length, v)


class TempNetLogitsProcessor(TemperatureLogitsProcessor):
    """Divides the scores by a stored TempNet's tau, so any model's `generate` uses it unchanged.

    The TempNet (any module [B, V] -> [B, 1]) is put in eval mode and moved to the scores' device on
    first use. Tokens already masked to -inf by an earlier processor are shown to it as the row's
    lowest finite score (TempNet's input must be finite).
    """

    def __init__(self, tempnet: nn.Module, record: bool = False):
        super().__init__(record)
        self.tempnet = tempnet.eval()

    @torch.no_grad()
    def temperature(self, scores: torch.Tensor) -> torch.Tensor:
        param = next(self.tempnet.parameters(), None)
        if param is not None and param.device != scores.device:
            self.tempnet.to(scores.device)
        finite = torch.isfinite(scores)
        if not finite.all():
            floor = scores.masked_fill(~finite, float("inf")).amin(dim=-1, keepdim=True)
            scores = torch.where(finite, scores, floor)
        return self.tempnet(scores)


class FixedTemperatureLogitsProcessor(TemperatureLogitsProcessor):
    """A constant temperature (unlike transformers' own, also applied in greedy and beam search)."""

    def __init__(self, tau: float, record: bool = False):
        super().__init__(record)
        self.fixed = FixedTemperature(tau)

    def temperature(self, scores: torch.Tensor) -> torch.Tensor:
        return self.fixed(scores)


class EntropyDynamicTemperatureLogitsProcessor(TemperatureLogitsProcessor):
    """llama.cpp's entropy-based dynamic temperature (dynatemp).

    T = t_min + (t_max - t_min) * (H / log n)^exponent, with n the number of candidate (finite)
    tokens; rows with a single candidate keep their scores (T = 1). llama.cpp's `--temp T
    --dynatemp-range R` is t_min = max(0, T - R), t_max = T + R (see `from_range`).
    """

    def __init__(self, t_min: float, t_max: float, exponent: float = 1.0, record: bool = False):
        super().__init__(record)
        if not 0 <= t_min <= t_max or not exponent > 0:
            raise ValueError(f"need 0 <= t_min <= t_max and exponent > 0, got {t_min}, {t_max}, {exponent}")
        self.t_min, self.t_max, self.exponent = float(t_min), float(t_max), float(exponent)

    @classmethod
    def from_range(cls, temperature: float, dynatemp_range: float, exponent: float = 1.0, record: bool = False):
        return cls(max(0.0, temperature - dynatemp_range), temperature + dynatemp_range, exponent, record)

    def temperature(self, scores: torch.Tensor) -> torch.Tensor:
        entropy, n = entropy_of_scores(scores)
        normalized = entropy / torch.log(n.clamp(min=2).float())
        tau = self.t_min + (self.t_max - self.t_min) * normalized.clamp(0, 1).pow(self.exponent)
        return torch.where(n > 1, tau.clamp(min=MIN_TEMPERATURE), torch.ones_like(tau))


class EDTLogitsProcessor(TemperatureLogitsProcessor):
    """Entropy-based Dynamic Temperature (EDT): T = t0 * n^(theta / H), clamped to >= MIN_TEMPERATURE.

    With 0 < n < 1 (the paper uses n = 0.8) a confident step (small H) gets a small T.
    """

    def __init__(self, t0: float = 1.0, n: float = 0.8, theta: float = 1.0, record: bool = False):
        super().__init__(record)
        if not t0 > 0 or not 0 < n < 1 or not theta > 0:
            raise ValueError(f"need t0 > 0, 0 < n < 1 and theta > 0, got t0={t0}, n={n}, theta={theta}")
        self.t0, self.n, self.theta = float(t0), float(n), float(theta)

    def temperature(self, scores: torch.Tensor) -> torch.Tensor:
        entropy, _ = entropy_of_scores(scores)
        exponent = self.theta / entropy.clamp(min=1e-12)
        return (self.t0 * torch.exp(exponent * math.log(self.n))).clamp(min=MIN_TEMPERATURE)


class HiddenStateTemperatureLogitsProcessor(TemperatureLogitsProcessor):
    """tau from the model's last hidden state (AutoDeco's head), not from the scores.

    The processor hooks the model's LM head (`capture_last_hidden`) and, at each step, applies `head` to the
    hidden state of the row's last position, the one whose logits are the scores. Use it as a context
    manager around `generate` (or teacher-forced forwards) so the hook is removed afterwards:

        with HiddenStateTemperatureLogitsProcessor(head, model) as proc:
            model.generate(ids, logits_processor=[proc], do_sample=True)

    Teacher-forced: `temperature_of_positions()` gives tau at every position of the latest forward [B, T, 1].
    """

    def __init__(self, head: nn.Module, model: nn.Module, record: bool = False):
        super().__init__(record)
        self.head, self.model = head.eval(), model
        self._capture, self._store = None, None

    def __enter__(self):  # a fresh hook each time, so one processor serves many forwards (lm-eval's batches)
        from tempnet.integrations.hidden_head import capture_last_hidden

        self._capture = capture_last_hidden(self.model)
        self._store = self._capture.__enter__()
        return self

    def __exit__(self, *exc):
        self._store = None
        return self._capture.__exit__(*exc)

    def _hidden(self) -> torch.Tensor:
        if self._store is None or "hidden" not in self._store:
            raise RuntimeError("HiddenStateTemperatureLogitsProcessor: use it inside `with` around the model's calls")
        return self._store["hidden"]

    @torch.no_grad()
    def temperature_of_positions(self) -> torch.Tensor:
        """tau at every position of the model's latest forward: [B, T, 1]."""
        return self.head(self._hidden())

    def positions(self, input_ids: torch.LongTensor, logits: torch.Tensor) -> torch.Tensor:
        """Teacher-forced (inside `with`, after the forward that gave `logits`): logits / tau of every position."""
        tau = self.temperature_of_positions().to(logits.device)  # [B, L, 1]
        if self.record:
            self.history.append(tau.reshape(-1).float().cpu())
        return logits / tau

    @torch.no_grad()
    def temperature(self, scores: torch.Tensor) -> torch.Tensor:
        hidden = self._hidden()[:, -1]  # [B, d]: the position whose logits are the scores
        if hidden.shape[0] != scores.shape[0]:
            raise ValueError(f"hidden states of {hidden.shape[0]} rows for scores of {scores.shape[0]} rows")
        return self.head(hidden).to(scores.device)


# ---- the sampling baselines: a fixed temperature, then truncation ------------------------------------------------
class _Truncation(FixedTemperatureLogitsProcessor):
    """scores / tau, then the tokens outside `keep(scores / tau)` [B, V] bool set to -inf."""

    def keep(self, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        scores = super().__call__(input_ids, scores)
        return scores.masked_fill(~self.keep(scores), float("-inf"))


class MinPLogitsProcessor(_Truncation):
    """min-p sampling (Nguyen et al. 2024): keep the tokens with p >= min_p * max p, after the temperature (the
    order of transformers' `generate(temperature=..., min_p=...)`); the rule is transformers' own warper."""

    def __init__(self, tau: float, min_p: float, record: bool = False):
        from transformers import MinPLogitsWarper

        super().__init__(tau, record)
        self.min_p = float(min_p)
        self.warper = MinPLogitsWarper(self.min_p)

    def keep(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(self.warper(None, scores))


class TopNSigmaLogitsProcessor(_Truncation):
    """top-n-sigma (Tang et al. 2024, arXiv 2411.07641): keep the tokens whose logit is within n standard
    deviations (over the finite logits of the row) of the largest; the kept set does not depend on tau."""

    def __init__(self, tau: float, n: float, record: bool = False):
        super().__init__(tau, record)
        if not n > 0:
            raise ValueError(f"n must be positive, got {n}")
        self.n = float(n)

    def keep(self, scores: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(scores)
        z = torch.where(finite, scores, torch.zeros_like(scores)).float()
        count = finite.sum(-1, keepdim=True).clamp(min=1)
        mean = z.sum(-1, keepdim=True) / count
        std = (((z - mean) * finite).pow(2).sum(-1, keepdim=True) / count).sqrt()
        top = scores.float().amax(-1, keepdim=True)
        return finite & (scores.float() >= top - self.n * std)


class PLessLogitsProcessor(_Truncation):
    """p-less sampling (Tan et al. 2025): keep the tokens with p >= sum_j p_j^2, the probability that two draws
    agree; no parameter besides the temperature before it."""

    def keep(self, scores: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(scores.float(), dim=-1)
        return p >= (p * p).sum(-1, keepdim=True) * (1 - 1e-6)  # the relative margin keeps a one-hot row's token
