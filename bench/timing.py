"""Timing helpers shared by bench/bench.py and bench/gpu.py.

Run-to-run noise is large (30% on a GPU, more on a shared CPU), so every comparison interleaves
its sides (A B A B ...) in one process and reports medians and the ratio of medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step and each epoch; the first `skip` steps are warm-up."""

    def __init__(self, skip: int = 2):
        self.skip = skip
        self.step_times: list[float] = []
        self.epoch_times: list[float] = []
        self._step_start = self._epoch_start = 0.0

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        if state.global_step > self.skip:
            self.step_times.append(time.perf_counter() - self._step_start)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self._sync()
        self.epoch_times.append(time.perf_counter() - self._epoch_start)


def steps_per_second(make_trainer: Callable[[], object], skip: int = 2) -> Callable[[], float]:
    """A measurement for `interleave`: build a fresh trainer, train, return timed optimizer steps/s."""

    def measure() -> float:
        timer = StepTimer(skip=skip)
        trainer = make_trainer()
        trainer.add_callback(timer)
        trainer.train()
        return len(timer.step_times) / sum(timer.step_times)

    return measure


def interleave(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call each side once per round, in alternating order; return every measurement per side."""
    results: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            value = sides[name]()
            results[name].append(value)
            print(f"  round {round_ + 1}/{repeats}  {name}: {value:.4g}", flush=True)
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_table(path: str | Path, title: str, header: list[str], rows: list[list[str]], notes: list[str]) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [""] + [f"- {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return text
