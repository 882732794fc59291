"""torch.compile and hftl's plan: what recompiles, and room for it.

Measured with the Trainer's `torch_compile` (accelerate compiles the model with automatic dynamic
shapes; tests/test_compile.py): dynamic padding costs one recompile in all (the second batch
length makes the sequence length symbolic), a short last batch one (the batch size), and each
phase change one: `eval_frozen` keeps a waiting group's modules in eval mode, and dynamo guards
every module's `training` flag (with `eval_frozen: false` no module changes mode and phase
changes recompile nothing). Past
`torch._dynamo.config.recompile_limit` (8) dynamo stops compiling the model and runs it eagerly for
the rest of the run, which gradual unfreezing of a 12-block model (14 phases) reaches mid-run.
"""

from __future__ import annotations

SHAPES_AND_MODES = 8  # torch's default limit: the first graph, sequence length, batch size, and headroom


def make_room(phases: int) -> int:
    """Raise dynamo's recompile limit so that every phase is compiled, not run eagerly; returns the limit."""
    import torch._dynamo

    needed = SHAPES_AND_MODES + phases
    if torch._dynamo.config.recompile_limit < needed:
        torch._dynamo.config.recompile_limit = needed
    return torch._dynamo.config.recompile_limit


def describe(phases: int, eval_frozen: bool, limit: int) -> str:
    """The line `hftl train` prints under torch_compile when the run has phases."""
    if not eval_frozen:
        return f"hftl: torch_compile with {phases} phases: eval_frozen is off, no module changes mode, no phase recompiles."
    return (f"hftl: torch_compile with {phases} phases: each phase change recompiles the model once (its blocks "
            f"leave eval mode; `eval_frozen: false` avoids it); dynamo's recompile limit is {limit}, so every phase "
            "stays compiled.")
