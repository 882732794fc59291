"""hftl vs the plain HF Trainer at GPU sizes: samples/s and MFU from the same run.

    python bench/gpu.py                      # on a GPU: BERT-base seq 128 batch 64, ViT-B/16 224px batch 128,
                                             #   CLIP ViT-B/32 + text 77 tokens batch 256
    python bench/gpu.py --tiny               # tiny configs on CPU, a few steps (what the tests run)

Models are built from configs (random init) and fed synthetic batches, so nothing is
downloaded. Per model, three sides are interleaved (A B C A B C ...): the plain Trainer with one
lr, hftl `full` with layer-wise lrs, and hftl with the bottom two thirds of the blocks frozen.
MFU counts training FLOPs as 3x the forward pass (2 FLOPs per weight per token plus attention
scores) over the --peak_tflops of the card (989 for an H100's dense bf16); for the frozen side the
backward pass of frozen blocks is not counted, since it never runs. For CLIP the plain side is
CLIPModel's own loss (`return_loss=True`), the hftl sides use hftl's contrastive loss and per-tower
plans (the frozen side locks the bottom two thirds of each tower).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from timing import interleave, median, steps_per_second, write_table  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402


@dataclass
class Case:
    name: str
    model: torch.nn.Module
    batch: int
    tokens: int  # sequence length (text) or number of patches + 1 (vision)
    make_example: object  # () -> dict of tensors for one example
    flops: object = None  # (trainable fraction) -> training FLOPs per sample; None: train_flops_per_sample


class Synthetic(torch.utils.data.Dataset):
    def __init__(self, make, n: int):
        self.items = [make() for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def bert_case(tiny: bool) -> Case:
    from transformers import BertConfig, BertForSequenceClassification

    kw = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64) if tiny else {}
    config = BertConfig(num_labels=2, **kw)
    seq = 16 if tiny else 128

    def example():
        return {"input_ids": torch.randint(1000, 20000 if not tiny else 30000, (seq,)),
                "attention_mask": torch.ones(seq, dtype=torch.long), "labels": torch.randint(0, 2, ()).long()}

    name = f"BERT {'tiny config' if tiny else 'base'}, seq {seq}"
    return Case(name, BertForSequenceClassification(config), 4 if tiny else 64, seq, example)


def vit_case(tiny: bool) -> Case:
    from transformers import ViTConfig, ViTForImageClassification

    kw = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8) if tiny else {}
    config = ViTConfig(num_labels=10, **kw)
    size = config.image_size

    def example():
        return {"pixel_values": torch.randn(3, size, size), "labels": torch.randint(0, 10, ()).long()}

    tokens = (size // config.patch_size) ** 2 + 1
    name = f"ViT {'tiny config' if tiny else 'B/16'}, {size} px"
    return Case(name, ViTForImageClassification(config), 4 if tiny else 128, tokens, example)


def clip_case(tiny: bool) -> Case:
    from transformers import CLIPConfig, CLIPModel

    if tiny:
        text = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, vocab_size=1000,
                    max_position_embeddings=16, bos_token_id=0, eos_token_id=2)
        vision = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    else:
        config = CLIPConfig(vision_config=dict(patch_size=32))  # ViT-B/32 image tower, 12-layer 512-d text tower
    seq = config.text_config.max_position_embeddings
    size = config.vision_config.image_size

    def example():
        ids = torch.randint(3, config.text_config.vocab_size - 1, (seq,))
        ids[-1] = config.text_config.eos_token_id
        return {"input_ids": ids, "attention_mask": torch.ones(seq, dtype=torch.long), "pixel_values": torch.randn(3, size, size)}

    patches = (size // config.vision_config.patch_size) ** 2 + 1

    def flops(fraction: float = 1.0) -> float:
        total = 0.0
        for tower, tokens in ((model.text_model, seq), (model.vision_model, patches)):
            cfg = tower.config
            n = sum(p.numel() for name, p in tower.named_parameters() if "embedding" not in name)
            total += 2 * n * tokens + 4 * cfg.num_hidden_layers * tokens**2 * cfg.hidden_size
        return total * (1 + 2 * fraction)

    model = CLIPModel(config)
    name = f"CLIP {'tiny config' if tiny else 'ViT-B/32'} + text {seq} tokens"
    return Case(name, model, 4 if tiny else 256, patches, example, flops)


class ReturnLoss(torch.utils.data.Dataset):
    """CLIP's own loss for the plain side: every example asks for it."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {**self.data[i], "return_loss": True}


def _return_loss_collate(rows):
    from transformers import default_data_collator

    batch = default_data_collator([{k: v for k, v in r.items() if k != "return_loss"} for r in rows])
    batch["return_loss"] = True
    return batch


def train_flops_per_sample(model: torch.nn.Module, tokens: int, trainable_fraction: float = 1.0) -> float:
    """Forward 2*N*T + attention 4*L*T^2*H; backward twice the forward of what trains."""
    config = model.config
    embed = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    n = sum(p.numel() for p in model.parameters()) - embed
    forward = 2 * n * tokens + 4 * config.num_hidden_layers * tokens**2 * config.hidden_size
    return forward * (1 + 2 * trainable_fraction)


def hftl_assignment(model, strategy: str, unfrozen: int, lr: float):
    from hftl.engine.freeze import FreezePlan, set_frozen_eval
    from hftl.engine.layers import is_dual_encoder, layer_groups
    from hftl.engine.optim import assign, group_lrs
    from hftl.engine.towers import TOWER_NAMES, TowerPlan, apply_tower_plans

    groups = layer_groups(model)
    if is_dual_encoder(model):
        plans = {tower: TowerPlan(strategy, unfrozen, lr, 0.9) for tower in TOWER_NAMES}
        _, lrs = apply_tower_plans(groups, plans, head_lr=10 * lr, logit_scale_lr=lr)
    else:
        FreezePlan(strategy, unfrozen).apply(groups)
        lrs = group_lrs(groups, lr, 0.9, 10 * lr)
    set_frozen_eval(model)
    return assign(groups, lrs, 0.01), groups


def run_case(case: Case, args, tmp: str) -> list[list[str]]:
    from hftl.engine.trainer import TransferTrainer

    gpu = torch.cuda.is_available() and not args.tiny
    steps = args.steps
    data = Synthetic(case.make_example, case.batch * (steps + 3))
    targs = TrainingArguments(
        output_dir=tmp, per_device_train_batch_size=case.batch, max_steps=steps + 2, learning_rate=2e-5,
        bf16=gpu, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=2 if gpu else 0, use_cpu=not gpu, train_sampling_strategy="random",
    )
    import copy

    base = case.model
    plain_model = copy.deepcopy(base)
    full_model = copy.deepcopy(base)
    frozen_model = copy.deepcopy(base)
    full_assign, _ = hftl_assignment(full_model, "full", 0, 2e-5)
    dual = case.flops is not None
    n_blocks = base.config.vision_config.num_hidden_layers if dual else base.config.num_hidden_layers
    extra = {}
    plain_data = data
    if dual:
        from types import SimpleNamespace

        from hftl.tasks import get_task

        settings = SimpleNamespace(transfer=SimpleNamespace(gather_features=False))  # the loss reads this key only
        extra = {"loss_fn": get_task("clip").loss_fn(settings)}
        plain_data = ReturnLoss(data)
    unfrozen = n_blocks - (2 * n_blocks) // 3  # bottom two thirds of the blocks (and embeddings) frozen
    frozen_assign, groups = hftl_assignment(frozen_model, "partial", unfrozen, 2e-5)
    trainable = sum(p.numel() for p in frozen_model.parameters() if p.requires_grad)
    fraction = trainable / sum(p.numel() for p in frozen_model.parameters())

    def side(make):
        steps = steps_per_second(make)
        return lambda: case.batch * steps()  # samples/s

    frozen_name = f"hftl, bottom {n_blocks - unfrozen} of {n_blocks} blocks frozen" + (" per tower" if dual else "")
    results = interleave(
        {
            "plain Trainer": side(lambda: Trainer(model=plain_model, args=targs, train_dataset=plain_data,
                                                  **({"data_collator": _return_loss_collate} if dual else {}))),
            "hftl full + layer-wise lrs": side(
                lambda: TransferTrainer(model=full_model, args=targs, train_dataset=data, assignment=full_assign, **extra)
            ),
            frozen_name: side(
                lambda: TransferTrainer(model=frozen_model, args=targs, train_dataset=data, assignment=frozen_assign, **extra)
            ),
        },
        args.repeats,
    )
    plain = median(results["plain Trainer"])
    rows = []
    for name, values in results.items():
        speed = median(values)
        share = fraction if name == frozen_name else 1.0
        flops = case.flops(share) if dual else train_flops_per_sample(base, case.tokens, share)
        mfu = f"{100 * speed * flops / (args.peak_tflops * 1e12):.1f}%" if gpu else "n/a (CPU)"
        rows.append([case.name, name, str(case.batch), f"{speed:.1f}", f"{speed / plain:.2f}x", mfu])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny configs on CPU: checks the script, measures nothing real")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default 50, tiny 2)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 3, tiny 2)")
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="the card's dense bf16 peak")
    parser.add_argument("--out", default=str(ROOT / "bench" / "gpu-results.md"))
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.tiny else 50)
    args.repeats = args.repeats or (2 if args.tiny else 3)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for make in (bert_case, vit_case, clip_case):
            case = make(args.tiny)
            print(f"== {case.name}", flush=True)
            rows += run_case(case, args, tmp)
    gpu = torch.cuda.is_available() and not args.tiny
    device = torch.cuda.get_device_name() if gpu else "CPU (tiny configs: a smoke test, not a measurement)"
    text = write_table(
        args.out, "hftl vs plain Trainer at GPU sizes", ["model", "side", "batch", "samples/s (median)", "vs plain", "MFU"],
        rows, [f"device: {device}; torch {torch.__version__}; {args.repeats} interleaved rounds x {args.steps} timed steps",
               "command: python bench/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])],
    )
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
