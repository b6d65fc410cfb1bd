"""The reference's optimizer and schedule.

ELECTRA (like BERT) uses Adam *without bias correction* and decoupled weight decay added to the
update before the learning rate multiplies it; torch's Adam/AdamW always bias-correct, so early
steps would differ by up to 1/(1-β₂ᵗ)^½. The learning rate is warmup × linear decay:
``lr(t) = lr · min(1, t / warmup) · max(0, 1 − t / total)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer


class AdamNoBiasCorrection(Optimizer):
    """m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  p ← p − lr·(m / (√v + ε) + wd·p)."""

    def __init__(
        self,
        params,
        lr: float = 5e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ):
        if lr < 0 or eps <= 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1:
            raise ValueError(f"invalid Adam settings lr={lr} betas={betas} eps={eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None, ok: torch.Tensor | None = None):
        """One update. ``ok`` (a 0-d bool tensor on the parameters' device, e.g. "the gradient norm
        is finite") makes a step that leaves parameters and moments exactly as they were when it is
        false, without a host sync: the skip is arithmetic, not a branch."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            ms, vs = self._moments(params)
            adam_update(
                params,
                [p.grad for p in params],
                ms,
                vs,
                lr=group["lr"],
                betas=group["betas"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                ok=ok,
            )
        return loss

    def _moments(self, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The first and second moments of ``params`` (zeros on the first step)."""
        for p in params:
            if not self.state[p]:
                self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                self.state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return [self.state[p]["exp_avg"] for p in params], [self.state[p]["exp_avg_sq"] for p in params]


def adam_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    ms: list[torch.Tensor],
    vs: list[torch.Tensor],
    *,
    lr: float | torch.Tensor,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    ok: torch.Tensor | None = None,
) -> None:
    """The update itself, on lists of tensors (foreach kernels): shared by the optimizer and the
    compiled fast step (where ``lr`` is a device tensor, so a changing rate recompiles nothing).
    With ``ok`` (0-d bool) a false value leaves parameters and moments exactly as they were."""
    b1, b2 = betas
    if ok is None:
        torch._foreach_lerp_(ms, grads, 1 - b1)  # m = b1·m + (1-b1)·g
        torch._foreach_mul_(vs, b2)
    else:
        okf = ok.to(params[0].dtype)
        grads = [torch.nan_to_num_(g, 0.0, 0.0, 0.0) for g in grads]
        torch._foreach_mul_(grads, okf)  # a skipped step sees a zero gradient...
        # ...and keeps its moments: m ← m·(1 − (1−β₁)·ok) + (1−β₁)·g, likewise v
        torch._foreach_mul_(ms, 1 - (1 - b1) * okf)
        torch._foreach_add_(ms, grads, alpha=1 - b1)
        torch._foreach_mul_(vs, 1 - (1 - b2) * okf)
    torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(ms, denom)
    if weight_decay:
        torch._foreach_add_(update, params, alpha=weight_decay)
    if ok is None and not isinstance(lr, torch.Tensor):
        torch._foreach_add_(params, update, alpha=-lr)
    else:
        scale = lr if ok is None else okf * lr
        torch._foreach_mul_(update, scale)  # ...and does not move the parameters
        torch._foreach_sub_(params, update)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights; none on biases and LayerNorm (shared parameters listed once)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else decay).append(
            p
        )
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Warmup multiplied by linear decay to 0 at ``total`` (step counts from 0 before the first update)."""
    warm = min(1.0, step / warmup) if warmup > 0 else 1.0
    return warm * max(0.0, 1.0 - step / total)


def make_optimizer(
    model: nn.Module,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    warmup: int,
    total: int,
):
    opt = AdamNoBiasCorrection(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total))
    return opt, sched


def optimizer_for(model: nn.Module, tcfg):
    """The optimizer and schedule a TrainConfig asks for (peak lr, betas, eps, weight decay, warm-up,
    decay to 0 at its schedule's last step)."""
    return make_optimizer(
        model,
        lr=tcfg.lr,
        betas=tuple(tcfg.adam_betas),
        eps=tcfg.adam_eps,
        weight_decay=tcfg.weight_decay,
        warmup=tcfg.warmup_steps,
        total=tcfg.schedule_steps,
    )
