"""Regularisers against forgetting, added to the task loss.

L2-SP pulls the fine-tuned backbone toward its pre-trained weights instead of toward zero:
alpha/2 * sum ||w - w0||^2 over backbone parameters that train (the new head has no
pre-trained point; plain weight decay covers it).
"""

from __future__ import annotations

import torch

from hftl.layers import LayerGroup


class L2SP:
    def __init__(self, groups: list[LayerGroup], alpha: float):
        self.alpha = alpha
        self.params = [p for g in groups if not g.is_head for _, p in g.params if p.requires_grad]
        self.anchors = [p.detach().clone() for p in self.params]  # the pre-trained point

    def penalty(self) -> torch.Tensor:
        if not self.params:
            return torch.zeros(())
        if self.anchors[0].device != self.params[0].device:  # the Trainer moved the model after we snapshot
            self.anchors = [a.to(p.device) for a, p in zip(self.anchors, self.params)]
        diffs = torch._foreach_sub(self.params, self.anchors)
        norms = torch._foreach_norm(diffs)
        return 0.5 * self.alpha * torch.stack([n.float() ** 2 for n in norms]).sum()

