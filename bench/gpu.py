"""hftl vs the plain HF Trainer at GPU sizes: samples/s and MFU from the same run.

    python bench/gpu.py                      # one command on one H100/H200, under 8 minutes: BERT-base seq 128 at
                                             #   batch 64 and 256, ViT-B/16 224 px at 128, CLIP ViT-B/32 at 256
    python bench/gpu.py --tiny               # tiny configs on CPU, one step (what the tests run)

Models are built from configs (random init) and fed synthetic batches, so nothing is downloaded.
Per model, the sides are interleaved (A B C D E, then E D C B A, ...): the plain Trainer with one lr,
hftl `full` with layer-wise lrs, hftl with the bottom two thirds of the blocks frozen, hftl `full`
under `torch_compile` (inductor), and hftl `full` with CUDA graphs (`torch_compile_mode:
reduce-overhead`; CUDA only). The first steps of every run are not timed (compilation, CUDA-graph
capture). A side that fails is reported as failed and the run goes on; past `--budget_s` the
remaining rounds and compiled sides are skipped, so the command ends in time.
MFU counts training FLOPs as 3x the forward pass (2 FLOPs per weight per token plus attention
scores) over the --peak_tflops of the card (989 for an H100's or H200's dense bf16); for the frozen
side the backward pass of frozen blocks is not counted, since it never runs. For CLIP the plain side
is CLIPModel's own loss (`return_loss=True`), the hftl sides use hftl's contrastive loss and
per-tower plans (the frozen side locks the bottom two thirds of each tower).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from timing import median, steps_per_second, write_table  # noqa: E402


@dataclass
class Case:
    name: str
    model: torch.nn.Module
    batch: int
    tokens: int  # sequence length (text) or number of patches + 1 (vision)
    make_example: object  # () -> dict of tensors for one example
    flops: object = None  # (trainable fraction) -> training FLOPs per sample; None: train_flops_per_sample

    @property
    def blocks(self) -> int:
        config = self.model.config
        return (config.vision_config if self.flops is not None else config).num_hidden_layers

    @property
    def unfrozen(self) -> int:
        return self.blocks - (2 * self.blocks) // 3  # the bottom two thirds of the blocks (and embeddings) frozen


class Synthetic(torch.utils.data.Dataset):
    """`n` examples drawn from a pool of at most `pool` distinct ones: a few batches of random data, not
    steps x batch images in host memory (CLIP at batch 256 would need 8 GB)."""

    def __init__(self, make, n: int, pool: int):
        self.items, self.n = [make() for _ in range(min(n, pool))], n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.items[i % len(self.items)]


def bert_case(tiny: bool, batch: int) -> Case:
    from transformers import BertConfig, BertForSequenceClassification

    kw = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64) if tiny else {}
    config = BertConfig(num_labels=2, **kw)
    seq = 16 if tiny else 128

    def example():
        return {"input_ids": torch.randint(1000, 20000, (seq,)), "attention_mask": torch.ones(seq, dtype=torch.long),
                "labels": torch.randint(0, 2, ()).long()}

    name = f"BERT {'tiny config' if tiny else 'base'}, seq {seq}"
    return Case(name, BertForSequenceClassification(config), batch, seq, example)


def vit_case(tiny: bool, batch: int) -> Case:
    from transformers import ViTConfig, ViTForImageClassification

    kw = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8) if tiny else {}
    config = ViTConfig(num_labels=10, **kw)
    size = config.image_size

    def example():
        return {"pixel_values": torch.randn(3, size, size), "labels": torch.randint(0, 10, ()).long()}

    tokens = (size // config.patch_size) ** 2 + 1
    name = f"ViT {'tiny config' if tiny else 'B/16'}, {size} px"
    return Case(name, ViTForImageClassification(config), batch, tokens, example)


def clip_case(tiny: bool, batch: int) -> Case:
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
    return Case(name, model, batch, patches, example, flops)


# (case builder, batch on a GPU, batch with --tiny)
CASES = ((bert_case, 64, 4), (bert_case, 256, 8), (vit_case, 128, 4), (clip_case, 256, 4))


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


def hftl_plan(model, strategy: str, unfrozen: int, lr: float):
    """hftl's plan through its public API (per tower for CLIP), applied; returns the optimizer assignment."""
    import hftl

    plan = hftl.TransferPlan.build(model, strategy=strategy, unfrozen_groups=unfrozen, learning_rate=lr,
                                   layer_decay=0.9, head_lr=10 * lr, weight_decay=0.01)
    plan.apply()
    return plan.assignment


PLAIN, FULL, FROZEN = "plain Trainer", "hftl full + layer-wise lrs", "hftl, bottom 2/3 of the blocks frozen"
COMPILED, GRAPHS = "hftl full + torch.compile", "hftl full + CUDA graphs"
SIDES = (PLAIN, FULL, FROZEN, COMPILED, GRAPHS)


class Budget:
    """Wall-clock budget of the whole command: past it, no new round or compiled side starts."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def training_args(case: Case, args, tmp: str, **extra):
    from transformers import TrainingArguments

    gpu = torch.cuda.is_available() and not args.tiny
    return TrainingArguments(
        output_dir=tmp, per_device_train_batch_size=case.batch, max_steps=args.steps + args.skip, learning_rate=2e-5,
        bf16=gpu, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=4 if gpu else 0, use_cpu=not gpu, train_sampling_strategy="random", **extra,
    )


def sides(case: Case, args, tmp: str) -> tuple[dict, dict, float]:
    """{side: () -> Trainer}, {side: why it does not run here}, and the frozen side's trainable share."""
    import copy

    from transformers import Trainer

    from hftl.engine.trainer import TransferTrainer

    data = Synthetic(case.make_example, case.batch * (args.steps + args.skip + 1), pool=4 * case.batch)
    dual = case.flops is not None
    models = {name: copy.deepcopy(case.model) for name in (PLAIN, FULL, FROZEN, COMPILED, GRAPHS)}
    plans = {name: hftl_plan(models[name], "full", 0, 2e-5) for name in (FULL, COMPILED, GRAPHS)}
    plans[FROZEN] = hftl_plan(models[FROZEN], "partial", case.unfrozen, 2e-5)
    params = list(models[FROZEN].parameters())
    share = sum(p.numel() for p in params if p.requires_grad) / sum(p.numel() for p in params)
    extra = {}
    if dual:
        from types import SimpleNamespace

        from hftl.tasks import get_task

        extra = {"loss_fn": get_task("clip").loss_fn(SimpleNamespace(transfer=SimpleNamespace(gather_features=False)))}
    run_args = {name: training_args(case, args, tmp) for name in (PLAIN, FULL, FROZEN)}
    run_args[COMPILED] = training_args(case, args, tmp, torch_compile=True, torch_compile_backend=args.compile_backend)
    run_args[GRAPHS] = training_args(case, args, tmp, torch_compile=True, torch_compile_mode="reduce-overhead")

    def hftl_side(name):
        return lambda: TransferTrainer(model=models[name], args=run_args[name], train_dataset=data,
                                       assignment=plans[name], **extra)

    made = {name: hftl_side(name) for name in (FULL, FROZEN, COMPILED, GRAPHS)}
    made[PLAIN] = lambda: Trainer(model=models[PLAIN], args=run_args[PLAIN], train_dataset=ReturnLoss(data) if dual else data,
                                  **({"data_collator": _return_loss_collate} if dual else {}))
    gpu = torch.cuda.is_available() and not args.tiny
    return {name: made[name] for name in SIDES}, {} if gpu else {GRAPHS: "n/a (needs CUDA)"}, share


def measure(make, skip: int) -> float:
    """Samples/s of one fresh run (its first `skip` steps untimed), or the error as text."""
    try:
        return steps_per_second(make, skip=skip)()
    except Exception as err:  # a side that does not work here is a finding, not the end of the benchmark
        return f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"


def run_case(case: Case, args, tmp: str, budget: Budget) -> list[list[str]]:
    made, not_run, share = sides(case, args, tmp)
    if budget.left() < args.compile_reserve_s:
        not_run.update({name: "skipped (time budget)" for name in (COMPILED, GRAPHS) if name not in not_run})
    order = [name for name in made if name not in not_run]
    results: dict[str, list] = {name: [] for name in order}
    for round_ in range(args.repeats):
        if round_ and budget.left() < 0:
            break
        for name in order if round_ % 2 == 0 else reversed(order):
            if results[name] and isinstance(results[name][-1], str):
                continue  # it failed once: it fails again
            value = measure(made[name], args.skip)
            results[name].append(value if isinstance(value, str) else case.batch * value)
            print(f"  round {round_ + 1}/{args.repeats}  {name}: {results[name][-1]}", flush=True)
    return rows_of(case, args, results, not_run, share)


def rows_of(case: Case, args, results: dict, not_run: dict, share: float) -> list[list[str]]:
    gpu = torch.cuda.is_available() and not args.tiny
    plain = median(results[PLAIN]) if results.get(PLAIN) and not isinstance(results[PLAIN][-1], str) else None
    rows = []
    for name in SIDES:
        values = results.get(name, [])
        if name in not_run or not values or isinstance(values[-1], str):
            why = not_run.get(name) or (values[-1] if values else "not run")
            rows.append([case.name, _label(case, name), str(case.batch), why, "", ""])
            continue
        speed = median(values)
        fraction = share if name == FROZEN else 1.0
        flops = case.flops(fraction) if case.flops is not None else train_flops_per_sample(case.model, case.tokens, fraction)
        mfu = f"{100 * speed * flops / (args.peak_tflops * 1e12):.1f}%" if gpu else "n/a (CPU)"
        ratio = f"{speed / plain:.2f}x" if plain else ""
        rows.append([case.name, _label(case, name), str(case.batch), f"{speed:.1f} ({len(values)})", ratio, mfu])
    return rows


def _label(case: Case, name: str) -> str:
    if name != FROZEN:
        return name
    return f"hftl, bottom {case.blocks - case.unfrozen} of {case.blocks} blocks frozen" + (" per tower" if case.flops else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny configs on CPU: checks the script, measures nothing real")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 20, tiny 1)")
    parser.add_argument("--skip", type=int, default=None, help="untimed first steps per run (default 4, tiny 1)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 3, tiny 1)")
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="the card's dense bf16 peak")
    parser.add_argument("--budget_s", type=float, default=360.0, help="wall-clock budget in s; past it no new round or compiled side starts")
    parser.add_argument("--compile_reserve_s", type=float, default=None,
                        help="a case's compiled sides start only with this much budget left (default 180, tiny 0)")
    parser.add_argument("--compile_backend", default=None, help="torch.compile backend (default inductor; tiny: eager, "
                        "dynamo's tracing without code generation, which takes minutes on a CPU)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "gpu-results.md"))
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.steps = args.steps or (1 if tiny else 20)
    args.skip = args.skip if args.skip is not None else (1 if tiny else 4)
    args.repeats = args.repeats or (1 if tiny else 3)
    args.compile_reserve_s = args.compile_reserve_s if args.compile_reserve_s is not None else (0 if tiny else 180)
    args.compile_backend = args.compile_backend or ("eager" if tiny else "inductor")
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)  # 4 models, 2 modes each
    budget, started = Budget(args.budget_s), time.monotonic()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for make, batch, tiny_batch in CASES:
            case = make(tiny, tiny_batch if tiny else batch)
            print(f"== {case.name}, batch {case.batch} ({budget.left():.0f} s of budget left)", flush=True)
            rows += run_case(case, args, tmp, budget)
            del case
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    gpu = torch.cuda.is_available() and not tiny
    device = torch.cuda.get_device_name() if gpu else "CPU (tiny configs: a smoke test, not a measurement)"
    text = write_table(
        args.out, "hftl vs plain Trainer at GPU sizes",
        ["model", "side", "batch", "samples/s (median, runs)", "vs plain", "MFU"], rows,
        [f"device: {device}; torch {torch.__version__}; up to {args.repeats} interleaved rounds x {args.steps} timed steps "
         f"after {args.skip} untimed; compile backend {args.compile_backend}; whole command {time.monotonic() - started:.0f} s",
         "command: python bench/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])],
    )
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
