"""`hftl wise-ft RECIPE.yaml`: weight-space ensembles of a zero-shot and a fine-tuned dual encoder.

For each alpha, theta = (1 - alpha) * theta_zero_shot + alpha * theta_fine_tuned, weight by weight,
and the zero-shot accuracy of that model on the recipe's held-out split (test, else validation)
is measured with the recipe's prompts. The zero-shot end is the recipe's `model_name_or_path`;
the fine-tuned end is the recipe's `output_dir` (what `hftl train` wrote) or `--fine_tuned PATH`.
Writes `wise_ft.md`, `wise_ft.csv` and `wise_ft.png` to `<fine-tuned folder>/wise-ft/`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from hftl.config import RunConfig
from hftl.errors import HftlError, first_line

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def check_compatible(zero_shot: dict[str, torch.Tensor], fine_tuned: dict[str, torch.Tensor]) -> None:
    """The same weight names and shapes on both ends: one architecture, one configuration."""
    if set(zero_shot) != set(fine_tuned):
        only_a, only_b = sorted(set(zero_shot) - set(fine_tuned)), sorted(set(fine_tuned) - set(zero_shot))
        raise HftlError(
            f"WiSE-FT needs two checkpoints of one architecture: weights only in the zero-shot model {only_a[:3]}, only in "
            f"the fine-tuned one {only_b[:3]}. Fine-tune the recipe's own model and interpolate with it."
        )
    for name, a in zero_shot.items():
        if a.shape != fine_tuned[name].shape:
            raise HftlError(
                f"WiSE-FT needs weights of equal shapes: `{name}` is {tuple(a.shape)} in the zero-shot model and "
                f"{tuple(fine_tuned[name].shape)} in the fine-tuned one. Use checkpoints of the same configuration."
            )


def interpolate(zero_shot: dict[str, torch.Tensor], fine_tuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * zero-shot + alpha * fine-tuned, weight by weight (exact at alpha 0 and 1)."""
    check_compatible(zero_shot, fine_tuned)
    out = {}
    for name, a in zero_shot.items():
        b = fine_tuned[name]
        if not a.is_floating_point() or alpha == 1:
            out[name] = b.clone()
        elif alpha == 0:
            out[name] = a.clone()
        else:
            out[name] = ((1 - alpha) * a.float() + alpha * b.float()).to(a.dtype)
    return out


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise HftlError(f"--alphas takes comma-separated numbers between 0 and 1, e.g. 0,0.5,1 (got `{text}`).") from None
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise HftlError(f"--alphas takes numbers between 0 (zero-shot) and 1 (fine-tuned), e.g. 0,0.5,1 (got `{text}`).")
    return sorted(set(alphas))


def run(config: RunConfig, alphas: list[float], fine_tuned: str | None = None) -> list[dict]:
    from hftl.tasks import get_task

    task = get_task(config.transfer.task)
    if not task.capabilities.zero_shot:
        raise HftlError(f"hftl wise-ft interpolates zero-shot and fine-tuned weights of a model that classifies "
                        f"zero-shot (task clip); this recipe's task `{config.transfer.task}` has no zero-shot metrics.")
    folder = Path(fine_tuned or config.training.output_dir)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise HftlError(
            f"`{folder}` holds no fine-tuned model (config.json and safetensors weights). Run `hftl train` on the recipe "
            "first, or pass `--fine_tuned PATH`."
        )
    raw, labels = task.load_data(config)
    if len(labels.names) < 2:
        raise HftlError("WiSE-FT measures zero-shot accuracy: the recipe's data needs a label column with 2+ classes.")
    loaded = task.build_model(config, labels)  # the zero-shot end, with the recipe's preprocessing
    model = loaded.model
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    end = _fine_tuned(folder, model).state_dict()
    check_compatible(start, end)  # shape and name checks before any evaluation
    encoded = task.encode(config, raw, loaded)
    rows, split = [], None
    for alpha in alphas:
        model.load_state_dict(interpolate(start, end, alpha))
        [(key, accuracy)] = task.zero_shot_metrics(config, loaded, encoded).items()
        split = key.removeprefix("zero_shot_").removesuffix("_accuracy")
        rows.append({"alpha": alpha, key: accuracy})
        print(f"hftl: alpha {alpha:.2f}: zero-shot {split} accuracy {accuracy:.4f}")
    if config.training.process_index == 0:  # under accelerate launch every rank measures; one writes
        _write(folder / "wise-ft", rows, split, config.model.model_name_or_path, str(folder))
    return rows


def _fine_tuned(folder: Path, zero_shot):
    """The fine-tuned end: the same architecture as the zero-shot model, or a clear error."""
    from transformers import AutoModel

    try:
        tuned = AutoModel.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise HftlError(f"Could not load the fine-tuned model in `{folder}`: {first_line(err)}.") from None
    if type(tuned) is not type(zero_shot):
        raise HftlError(
            f"WiSE-FT needs two checkpoints of one architecture: the zero-shot model is {type(zero_shot).__name__}, "
            f"`{folder}` holds {type(tuned).__name__}."
        )
    return tuned


def _write(out: Path, rows: list[dict], split: str, zero_shot: str, fine_tuned: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    key = f"zero_shot_{split}_accuracy"
    with open(out / "wise_ft.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["alpha", key])
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# WiSE-FT: `{zero_shot}` (alpha 0) to `{fine_tuned}` (alpha 1)",
        "",
        f"| alpha | zero-shot {split} accuracy |",
        "|---:|---:|",
        *[f"| {r['alpha']:.2f} | {r[key]:.4f} |" for r in rows],
        "",
    ]
    (out / "wise_ft.md").write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["alpha"] for r in rows], [r[key] for r in rows], marker="o")
    ax.set_xlabel("alpha (0 = zero-shot weights, 1 = fine-tuned weights)")
    ax.set_ylabel(f"zero-shot {split} accuracy")
    ax.set_title("WiSE-FT weight interpolation")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "wise_ft.png", dpi=120)
    plt.close(fig)
    print(f"hftl: WiSE-FT table and plot written to {out}")
