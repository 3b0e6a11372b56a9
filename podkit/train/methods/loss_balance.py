"""Dynamic multi-scale loss balance: AVW and RLO (Luo et al., "Dynamic Multi-Scale Loss
Optimization for Object Detection"). No public code exists; docs/methods.md gives podkit's
choices.

Every level i of a head has a loss L_i (classification + regression, from the detector's
`TrainingStats.level_losses`); the head trains on sum_i w_i L_i, w from the control
`level_weights`.
Every `interval` (alpha) iterations, per level: the interval's loss sum L_{i,t} and the
unbiased variance Var_{i,t} of its per-iteration losses, and the variance decrease rate
r_{i,t} = (Var_{i,t-1} - Var_{i,t}) / (Var_{i,t-1} + 1e-5), with Var_{i,0} = 1.
Weighting actions, each giving the 2 (`top`) chosen levels w_j = 1 + lambda L_{j,t} / sum_i L_{i,t}
and the others 1:
  a0 (AVW): the 2 levels with the largest r;   a1: the 2 with the smallest interval loss;
  a2: the 2 with the largest interval loss;    a3: all weights 1.
AVW always takes a0. RLO samples an action from p (start 0.25 each); at the next interval
end the action is rewarded by sign(sum L_{t-1} - sum L_t), its probability moves by
+-gamma (not at all for a reward of 0), clipped to [0.1, 0.9], and the others are rescaled
so p sums to 1.
alpha defaults to 50: enough per-iteration losses for a stable variance, yet ~1800 weight
updates in a 90k schedule (18 in the 900-iteration tiny recipe). Under DDP the per-level
losses are averaged over processes and the RNG is seeded alike, so ranks agree.
"""

from __future__ import annotations

import random

import torch

from podkit.models.output import TrainingStats
from podkit.train.distributed import all_reduce_mean
from podkit.train.hooks import Hook, TrainState, rng_state, set_rng_state

ACTIONS = ("avw", "smallest_loss", "largest_loss", "uniform")
HEADS = ("rpn", "rcnn", "retinanet")


def variance_decrease(prev_var: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return (prev_var - var) / (prev_var + 1e-5)


def action_weights(
    action: int, interval_loss: torch.Tensor, rate: torch.Tensor, lam: float, top: int = 2
) -> torch.Tensor:
    """Level weights of one action from the interval's per-level losses and variance rates."""
    weights = torch.ones_like(interval_loss)
    if action == 3:
        return weights
    key = {0: rate, 1: -interval_loss, 2: interval_loss}[action]
    chosen = torch.topk(key, min(top, len(key))).indices
    weights[chosen] = 1 + lam * interval_loss[chosen] / interval_loss.sum().clamp(min=1e-12)
    return weights


def update_probs(
    probs: list[float],
    action: int,
    reward: float,
    gamma: float,
    low: float = 0.1,
    high: float = 0.9,
) -> list[float]:
    """Move the rewarded action's probability by gamma * sign(reward), clip, renormalise the rest."""
    sign = (reward > 0) - (reward < 0)
    new = list(probs)
    new[action] = min(high, max(low, probs[action] + gamma * sign))
    rest = sum(p for k, p in enumerate(probs) if k != action)
    for k in range(len(new)):
        if k != action:
            new[k] = (
                probs[k] * (1 - new[action]) / rest
                if rest > 0
                else (1 - new[action]) / (len(new) - 1)
            )
    return new


class LossBalance(Hook):
    """RLO over every head with FPN levels (`policy` "rlo": sample an action; the AVW
    subclass's "avw": always a0).

    What the paper ablates is exposed: `top` (levels an action boosts, 2), `actions` (the set
    RLO samples from, all four by default) and `heads` (which heads are balanced: rpn, rcnn,
    retinanet; all by default). A head with no more than `top` levels (the C4 RPN and R-CNN
    have one) keeps weight 1: boosting all of its levels would only scale its learning rate,
    which the paper rules out; the log says so once.
    """

    name = "loss_balance"

    policy = "rlo"

    def __init__(
        self,
        interval: int = 50,
        lam: float = 1.5,
        gamma: float = 0.01,
        seed: int = 0,
        top: int = 2,
        actions: list[str] | None = None,
        heads: list[str] | None = None,
    ) -> None:
        if interval < 2:
            raise ValueError("loss balance: interval must be >= 2 (a variance needs two losses)")
        if not isinstance(top, int) or top < 1:
            raise ValueError(f"loss balance: top must be an integer >= 1, got {top!r}")
        actions = list(ACTIONS) if actions is None else list(actions)
        unknown = [a for a in actions if a not in ACTIONS]
        if unknown or not actions:
            raise ValueError(
                f"loss balance: actions must be a non-empty subset of {ACTIONS}, got {actions}"
            )
        unknown_heads = [h for h in heads or [] if h not in HEADS]
        if unknown_heads or heads == []:
            raise ValueError(
                f"loss balance: heads must be a non-empty subset of {HEADS}, got {heads}"
            )
        self.interval, self.lam, self.gamma = interval, lam, gamma
        self.top, self.balanced = top, heads
        self.actions = [ACTIONS.index(a) for a in actions]  # RLO samples among these
        self.rng = random.Random(seed)
        self.probs = [1.0 / len(self.actions)] * len(self.actions)
        self.action: int | None = None  # the action in force (RLO: rewarded at the next update)
        self.prev_total: float | None = None
        self.history: dict[str, list[torch.Tensor]] = {}
        self.prev_var: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}
        self.noted = False

    def before_step(self, state: TrainState, batch):
        # the heads reporting per-level losses are those with a level_weights control
        state.controls.level_weights.update(self.weights)
        return batch

    def observe(self, state: TrainState, stats: TrainingStats) -> None:
        for name, per_level in stats.level_losses.items():
            if self.balanced is not None and name not in self.balanced:
                continue
            self.history.setdefault(name, []).append(
                all_reduce_mean(per_level.detach().double().cpu())
            )

    def after_step(self, state: TrainState) -> None:
        if state.iteration % self.interval == 0 and self.history:
            self.update()
        if self.weights:
            key = "level_weights" if len(self.weights) == 1 else None
            for name, w in self.weights.items():
                state.metrics[key or f"level_weights_{name}"] = [round(float(v), 6) for v in w]
        if self.policy == "rlo":
            state.metrics["rlo_probs"] = [round(p, 6) for p in self.probs]
            state.metrics["rlo_action"] = self.action
        if not self.noted and self.history:
            self.noted = True
            few = [f"{n} ({len(r[0])})" for n, r in self.history.items() if len(r[0]) <= self.top]
            if few:
                state.metrics["loss_balance_note"] = (
                    f"heads with at most {self.top} levels keep weight 1: {', '.join(few)}"
                )

    def update(self) -> None:
        """End of an interval: rates, reward, next action, new weights."""
        sums, rates = {}, {}
        for name, rows in self.history.items():
            losses = torch.stack(rows)  # (interval, levels)
            var = losses.var(dim=0, unbiased=True)
            rates[name] = variance_decrease(self.prev_var.get(name, torch.ones_like(var)), var)
            self.prev_var[name] = var
            sums[name] = losses.sum(dim=0)
        total = float(sum(s.sum() for s in sums.values()))
        if self.policy == "avw":
            self.action = 0
        else:
            if self.action is not None and self.prev_total is not None:
                self.probs = update_probs(
                    self.probs, self.actions.index(self.action), self.prev_total - total,
                    self.gamma,
                )  # fmt: skip
            self.action = self.rng.choices(self.actions, weights=self.probs)[0]
        self.prev_total = total
        self.weights = {
            name: action_weights(self.action, sums[name], rates[name], self.lam, self.top).float()
            if len(sums[name]) > self.top
            else torch.ones(len(sums[name]))
            for name in sums
        }
        self.history = {}

    def state_dict(self) -> dict:
        return {
            "probs": list(self.probs),
            "action": self.action,
            "prev_total": self.prev_total,
            "history": {k: [r.tolist() for r in v] for k, v in self.history.items()},
            "prev_var": {k: v.tolist() for k, v in self.prev_var.items()},
            "weights": {k: v.tolist() for k, v in self.weights.items()},
            "rng": rng_state(self.rng),
            "noted": self.noted,
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.probs, self.action, self.prev_total = (
            list(state["probs"]),
            state["action"],
            state["prev_total"],
        )
        self.history = {
            k: [torch.tensor(r, dtype=torch.float64) for r in v]
            for k, v in state["history"].items()
        }
        self.prev_var = {
            k: torch.tensor(v, dtype=torch.float64) for k, v in state["prev_var"].items()
        }
        self.weights = {k: torch.tensor(v) for k, v in state["weights"].items()}
        set_rng_state(self.rng, state["rng"])
        self.noted = state.get("noted", False)


class AVW(LossBalance):
    """AVW alone: always action a0, so RLO's gamma, seed and actions do not apply."""

    name = "avw"
    policy = "avw"

    def __init__(
        self, interval: int = 50, lam: float = 1.5, top: int = 2, heads: list[str] | None = None
    ) -> None:
        super().__init__(interval, lam, top=top, heads=heads)


class RLO(LossBalance):
    name = "rlo"
