"""The layer-group plan a user reads before spending compute: a table, a CSV and an lr chart."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from hftl.engine.layers import LayerGroup
from hftl.engine.optim import Assignment


@dataclass
class PlanRow:
    group: str
    params: int
    trainable_params: int
    lr: float
    weight_decay: float
    no_decay_tensors: int

    @property
    def status(self) -> str:
        if self.trainable_params == 0:
            return "frozen"
        if self.trainable_params == self.params:
            return "trainable"
        return f"partly ({self.trainable_params:,} trainable)"


def plan_rows(groups: list[LayerGroup], assignment: dict[str, Assignment],
              trains: dict[str, bool] | None = None) -> list[PlanRow]:
    """One row per group; `trains` ({parameter: trains}) where the plan is not applied yet, else requires_grad."""
    trains = trains if trains is not None else {n: p.requires_grad for g in groups for n, p in g.params}
    rows = []
    for group in groups:
        decays = [assignment[n].weight_decay for n, _ in group.params]
        rows.append(
            PlanRow(
                group=group.name,
                params=group.numel,
                trainable_params=sum(p.numel() for n, p in group.params if trains[n]),
                lr=assignment[group.params[0][0]].lr,
                weight_decay=max(decays),
                no_decay_tensors=sum(1 for n, _ in group.params if assignment[n].group.endswith("/no_decay")),
            )
        )
    return rows


def _wd_text(row: PlanRow) -> str:
    return f"{row.weight_decay:g} (0 for {row.no_decay_tensors} bias/norm/position tensors)"


def markdown(rows: list[PlanRow]) -> str:
    lines = ["| group | parameters | state | lr | weight decay |", "|---|---:|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r.group} | {r.params:,} | {r.status} | {r.lr:.3g} | {_wd_text(r)} |")
    total = sum(r.params for r in rows)
    trainable = sum(r.trainable_params for r in rows)
    lines.append(f"| **total** | {total:,} | {trainable:,} trainable ({100 * trainable / max(total, 1):.1f}%) | | |")
    return "\n".join(lines) + "\n"


def text_table(rows: list[PlanRow]) -> str:
    header = f"{'group':<12} {'parameters':>12}  {'state':<10} {'lr':>10}  weight decay"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.group:<12} {r.params:>12,}  {r.status:<10} {r.lr:>10.3g}  {_wd_text(r)}")
    total = sum(r.params for r in rows)
    trainable = sum(r.trainable_params for r in rows)
    lines.append(f"{'total':<12} {total:>12,}  {trainable:,} trainable ({100 * trainable / max(total, 1):.1f}%)")
    return "\n".join(lines)


def write_plan(rows: list[PlanRow], output_dir: str | Path, title: str) -> list[Path]:
    """Write plan.md, plan.csv and plan.png (lr per group, frozen groups hatched) into output_dir."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.md").write_text(f"# Layer-group plan: {title}\n\n" + markdown(rows))
    with open(out / "plan.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "parameters", "trainable_parameters", "state", "lr", "weight_decay", "no_decay_tensors"])
        for r in rows:
            writer.writerow([r.group, r.params, r.trainable_params, r.status, r.lr, r.weight_decay, r.no_decay_tensors])
    chart(rows, out / "plan.png", title)
    return [out / "plan.md", out / "plan.csv", out / "plan.png"]


def chart(rows: list[PlanRow], path: Path, title: str) -> None:
    """lr per group (log scale), frozen groups grey and hatched."""
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows) + 2), 4))
    colors = ["#4c72b0" if r.trainable_params else "#c8c8c8" for r in rows]
    hatches = ["" if r.trainable_params else "//" for r in rows]
    bars = ax.bar([r.group for r in rows], [r.lr for r in rows], color=colors)
    for bar, hatch in zip(bars, hatches):
        bar.set_hatch(hatch)
    ax.set_yscale("log")
    ax.set_ylabel("learning rate (log scale)")
    ax.set_xlabel("layer group (input side → head)")
    ax.set_title(f"{title}\nblue: trains, grey hatched: frozen")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
