"""Regularisers against forgetting, added to the task loss.

L2-SP pulls the fine-tuned backbone toward its pre-trained weights instead of toward zero:
alpha/2 * sum ||w - w0||^2 over backbone parameters that train (the new head has no
pre-trained point; plain weight decay covers it). EWC weighs that distance per weight by a
diagonal Fisher estimated on a given dataset.

Both take a `TransferPlan` (or its layer groups) and are callables: `loss = penalty(loss)` adds the
penalty to a loss in a training loop of your own; the Trainer path calls `penalty()`.
"""

from __future__ import annotations

import torch

from hftl.engine.layers import LayerGroup
from hftl.engine.pooling import mean_pooled


class L2SP:
    """alpha/2 * sum ||w - w0||^2 over the trainable backbone; with `weights` (EWC's Fisher), each squared
    distance is weighed: the penalty is the norm of sqrt(F) * (w - w0), one fused pass per step either way."""

    def __init__(self, plan, alpha: float, weights: list[torch.Tensor] | None = None):
        """`plan`: a TransferPlan (applied) or its layer groups; the snapshot taken now is the anchor."""
        self.alpha = alpha
        self.params = trainable_backbone(getattr(plan, "groups", plan))
        self.anchors = [p.detach().clone() for p in self.params]  # the pre-trained point
        if weights is not None and len(weights) != len(self.params):
            raise ValueError("one weight tensor per trainable backbone parameter")
        self.roots = None if weights is None else [w.sqrt() for w in weights]  # taken once, not every step

    def penalty(self) -> torch.Tensor:
        if not self.params:
            return torch.zeros(())
        if self.anchors[0].device != self.params[0].device:  # the Trainer moved the model after we snapshot
            self.anchors = [a.to(p.device) for a, p in zip(self.anchors, self.params)]
            self.roots = None if self.roots is None else [r.to(p.device) for r, p in zip(self.roots, self.params)]
        diffs = torch._foreach_sub(self.params, self.anchors)
        if self.roots is not None:
            torch._foreach_mul_(diffs, self.roots)
        norms = torch._foreach_norm(diffs)
        return 0.5 * self.alpha * torch.stack([n.float() ** 2 for n in norms]).sum()

    def __call__(self, loss: torch.Tensor | None = None) -> torch.Tensor:
        """`loss + penalty` (the penalty alone without a loss)."""
        penalty = self.penalty()
        return penalty if loss is None else loss + penalty.to(loss.device, loss.dtype)


class EWC(L2SP):
    """Elastic weight consolidation: lambda/2 * sum_i F_i (w_i - w*_i)^2 over trainable backbone weights.

    F is a diagonal Fisher estimated at the pre-trained point w* on `ewc_data`. The encoders hftl
    fine-tunes usually come without their pre-training head, so the Fisher is that of the encoder's
    own output: the mean-pooled last hidden state f(x), read as the mean of a unit Gaussian. Its
    diagonal, sum_k (df_k/dw_i)^2 averaged over examples, is estimated without one backward per
    output dimension: for a random v ~ N(0, I), E[(d(v.f)/dw_i)^2] equals it exactly (and
    independent v per example lets a whole batch share one backward). F is scaled to mean 1, so
    `ewc: 1.0` weighs as much as `l2_sp: 1.0` on average, moved toward the weights that matter.
    """

    def __init__(self, plan, lam: float, fisher: list[torch.Tensor]):
        super().__init__(plan, lam, weights=fisher)

    @classmethod
    def estimate(cls, plan, lam: float, encoder, batches, seed: int = 0) -> EWC:
        """EWC with the Fisher of `encoder`'s mean-pooled output (model.base_model) on `batches` (dicts of
        model inputs, without labels), over the plan's trainable backbone weights."""
        return cls(plan, lam, embedding_fisher(encoder, trainable_backbone(getattr(plan, "groups", plan)), batches, seed))


def trainable_backbone(groups: list[LayerGroup]) -> list[torch.nn.Parameter]:
    return [p for g in groups if not g.is_head for _, p in g.params if p.requires_grad]


def embedding_fisher(encoder, params: list[torch.nn.Parameter], batches, seed: int = 0) -> list[torch.Tensor]:
    """Diagonal Fisher of the mean-pooled output w.r.t. `params`, scaled to mean 1 (see EWC)."""
    generator = torch.Generator().manual_seed(seed)  # the same on every rank: identical penalties under DDP
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    was = encoder.training
    encoder.eval()  # no dropout: the Fisher of the function that is kept
    count = 0
    try:
        device = params[0].device
        for batch in batches:
            pooled = mean_pooled(encoder, {k: v.to(device) for k, v in batch.items()}).float()
            v = torch.randn(pooled.shape, generator=generator).to(pooled.device)
            grads = torch.autograd.grad((pooled * v).sum(), params, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f.add_(g.float() ** 2)
            count += pooled.shape[0]
    finally:
        encoder.train(was)
    if count == 0:
        raise ValueError("no examples for the Fisher")
    total = sum(f.sum() for f in fisher)
    n = sum(f.numel() for f in fisher)
    scale = n / total if total > 0 else 1.0
    return [f * scale for f in fisher]


class Sum:
    """Several penalties as one (L2-SP and EWC together)."""

    def __init__(self, parts: list):
        self.parts = parts

    def penalty(self) -> torch.Tensor:
        return sum(p.penalty() for p in self.parts)
