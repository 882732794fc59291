"""hftl: transfer learning on the Hugging Face stack with layer-wise learning rates and freeze plans.

The CLI (`hftl train RECIPE.yaml`) runs recipes; the same engine is a small library for a training
script of your own (a Trainer subclass, an accelerate loop):

- `TransferPlan.build(model, strategy=..., learning_rate=..., layer_decay=..., head_lr=..., groups=...)`:
  layer groups, freeze state and explicit lrs; `.apply()`, `.param_groups()`, `.optimizer(cls)`,
  `.table()`, `.chart(path)`.
- `Phases(plan, head_warmup_epochs=..., unfreeze_every=...)`: LP-FT and gradual unfreezing, as a
  TrainerCallback or through `on_epoch(epoch)` and `drop_inactive_grads()` in your own loop.
- `TowerPlan`: one tower's plan, for `TransferPlan.build(dual_encoder, towers={...})`.
- `L2SP(plan, alpha)`, `EWC.estimate(plan, lam, encoder, batches)`: penalties; `loss = penalty(loss)`.
- `HftlError`: bad input, with a message that names the problem and the fix.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["EWC", "L2SP", "HftlError", "Phases", "TowerPlan", "TransferPlan"]

_WHERE = {  # imported on first use: `hftl --help` and `import hftl` stay fast
    "TransferPlan": "hftl.engine.transfer", "Phases": "hftl.engine.phases", "TowerPlan": "hftl.engine.towers",
    "L2SP": "hftl.forgetting.penalties", "EWC": "hftl.forgetting.penalties", "HftlError": "hftl.errors",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'hftl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
