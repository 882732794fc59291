"""Run folders, checkpoints, interruptions and hostile inputs: nothing already written is lost.

The catalogue is one row per case: the input, the message fragment the user must see, and (for every
row) a snapshot of the test's whole folder before and after, so "nothing written, nothing lost" is
checked, not assumed. The tests after it follow whole runs: a failed run and its corrected rerun, a
full disk at a checkpoint and at the final save, overwriting a finished run, a failed push, Ctrl-C.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import write_csv, write_recipe
from helpers import cli_error, snapshot, write_folder

from hftl.cli import main
from hftl.engine import checkpoint_files, run_folder


# ---------------------------------------------------------------- shared inputs


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_bert, sentiment_csv, tiny_vit):
    """A finished run with checkpoint-2 and checkpoint-4 (copied by each test that changes it), and images."""
    root = tmp_path_factory.mktemp("run-safety")
    finished = root / "finished"
    recipe = write_recipe(root / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
                          output_dir=str(finished), max_steps=4, save_strategy="steps", save_steps=2)
    assert main(["train", str(recipe)]) == 0
    images = write_folder(root / "images", per_class=3)
    return dict(bert=tiny_bert, csv=sentiment_csv / "train.csv", finished=finished, vit=tiny_vit, images=images)


class Ctx:
    """One case's folder: `out` is where its run would write; helpers build recipes, runs and data in it."""

    def __init__(self, tmp_path: Path, monkeypatch, shared: dict):
        self.tmp, self.mp, self.shared = tmp_path, monkeypatch, shared
        self.out = tmp_path / "out"

    def recipe(self, **values) -> str:
        base = dict(model_name_or_path=str(self.shared["bert"]), train_file=str(self.shared["csv"]),
                    output_dir=str(self.out), max_steps=1)
        return str(write_recipe(self.tmp / "recipe.yaml", **{**base, **values}))

    def image_recipe(self, rows: list[dict] | None = None, **values) -> str:
        """An image recipe on a csv of image paths (`rows`) in data/, or on the shared image folder."""
        base = dict(task="image-classification", model_name_or_path=str(self.shared["vit"]), output_dir=str(self.out),
                    max_steps=1, per_device_train_batch_size=4)
        if rows is None:
            base["dataset"] = str(self.shared["images"])
        else:
            base["train_file"] = str(write_csv(self.data / "train.csv", rows))
        return str(write_recipe(self.tmp / "recipe.yaml", **{**base, **values}))

    @property
    def data(self) -> Path:
        """data/ with images/<class>/*.png: what a csv's paths may name."""
        folder = self.tmp / "data"
        if not folder.is_dir():
            shutil.copytree(self.shared["images"], folder / "images")
        return folder

    def image_rows(self, extra: str) -> list[dict]:
        rows = [{"image": str(p.relative_to(self.data)), "label": p.parent.name}
                for p in sorted((self.data / "images").rglob("*.png"))]
        return rows[:3] + [{"image": extra, "label": "red"}] + rows[3:]

    def finished(self, status: str | None = None) -> Path:
        """A copy of the shared finished run in `out`; `status` rewrites its marker (e.g. running: stopped)."""
        shutil.copytree(self.shared["finished"], self.out)
        if status:
            (self.out / run_folder.MARKER).write_text(json.dumps({"status": status}))
        return self.out

    def checkpoint(self, name: str = "checkpoint-4") -> Path:
        return self.finished() / name


def huge_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG of width x height in a few kB; decoded, it needs width x height bytes or more."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, squeeze = b"\0" * (1 + (width + 7) // 8), zlib.compressobj(9)
    body = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def evil_pickle(path: Path) -> None:
    """A torch file whose pickle calls os.system when loaded without the safe loader."""
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"python": Payload()}, path)


def truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def hub_reachable(ctx: Ctx, whoami: Callable = lambda: {"name": "me"}) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    ctx.mp.setattr(constants, "HF_HUB_OFFLINE", False)
    ctx.mp.setattr(huggingface_hub, "whoami", whoami)


def _offline(ctx: Ctx) -> None:
    from huggingface_hub import constants

    ctx.mp.setattr(constants, "HF_HUB_OFFLINE", True)


def _raise(err: Exception):
    def fail(*args, **kwargs):
        raise err

    return fail


def _read_only(ctx: Ctx) -> Path:
    locked = ctx.tmp / "locked"
    locked.mkdir()
    real = os.access
    ctx.mp.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(locked)) else real(p, mode, **kw))
    return locked / "out"


def _pickle_only(ctx: Ctx) -> str:
    import torch
    from safetensors.torch import load_file

    folder = ctx.tmp / "pickled"
    shutil.copytree(ctx.shared["bert"], folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return str(folder)


def _outside_link(ctx: Ctx) -> str:
    elsewhere = ctx.tmp / "elsewhere.png"
    shutil.copy(next((ctx.data / "images" / "red").glob("*.png")), elsewhere)
    (ctx.data / "images" / "red" / "link.png").symlink_to(elsewhere)
    return "images/red/link.png"


def _folder_with_link(ctx: Ctx) -> str:
    elsewhere = ctx.tmp / "secret.png"
    shutil.copy(next((ctx.data / "images" / "red").glob("*.png")), elsewhere)
    (ctx.data / "images" / "red" / "z.png").symlink_to(elsewhere)
    return ctx.image_recipe(dataset=str(ctx.data / "images"))


# ---------------------------------------------------------------- the catalogue


@dataclass
class Case:
    kind: str  # traceback (was one) | silent (was accepted) | data-lost (was lost) | hostile (a limit) | new
    argv: Callable[[Ctx], list[str]]  # builds the case's files, returns the command line
    fragment: str  # in the message
    rc: int = 2  # 0: a command that succeeds but must not write (hftl plan into a finished run)


def _resume(ctx: Ctx, breaks: Callable[[Path], None]) -> list[str]:
    """Resume from checkpoint-4 of a finished run after `breaks` damaged it."""
    folder = ctx.checkpoint()
    breaks(folder)
    return ["train", ctx.recipe(), "--resume_from_checkpoint", str(folder)]


CASES = {
    # ---- tracebacks before
    "output_dir is a file": Case("traceback", lambda c: (
        c.out.write_text("not a folder"), ["train", c.recipe()])[1], "is a file, not a folder"),
    "output_dir under a file": Case("traceback", lambda c: (
        (c.tmp / "afile").write_text("x"), ["train", c.recipe(output_dir=str(c.tmp / "afile" / "out"))])[1],
        "cannot be created"),
    "output_dir read-only": Case("traceback", lambda c: ["train", c.recipe(output_dir=str(_read_only(c)))],
                                 "is not writable"),
    "push_to_hub offline": Case("traceback", lambda c: (
        _offline(c), ["train", c.recipe(), "--push_to_hub", "true"])[1], "HF_HUB_OFFLINE"),
    "push_to_hub unreachable": Case("traceback", lambda c: (
        hub_reachable(c, _raise(ConnectionError("connection refused"))),
        ["train", c.recipe(), "--push_to_hub", "true"])[1], "cannot reach the Hub"),
    "checkpoint weights truncated": Case("traceback", lambda c: _resume(
        c, lambda f: truncate(f / "model.safetensors")), "model.safetensors is truncated"),
    "checkpoint weights junk": Case("traceback", lambda c: _resume(
        c, lambda f: (f / "model.safetensors").write_bytes(os.urandom(64))), "safetensors file"),
    "trainer_state.json junk": Case("traceback", lambda c: _resume(
        c, lambda f: (f / "trainer_state.json").write_text('{"global_step": 4, "log_hi')), "trainer_state.json does not parse"),
    "optimizer.pt truncated": Case("traceback", lambda c: _resume(
        c, lambda f: truncate(f / "optimizer.pt")), "optimizer.pt does not load"),
    "rng pickle torch refuses": Case("traceback", lambda c: _resume(
        c, lambda f: evil_pickle(f / "rng_state.pth")), "safe loader refuses (it calls `posix.system`)"),
    "model folder weights truncated": Case("traceback", lambda c: (
        shutil.copytree(c.shared["bert"], c.tmp / "m"), truncate(c.tmp / "m" / "model.safetensors"),
        ["train", c.recipe(model_name_or_path=str(c.tmp / "m"))])[2], "Could not load model"),
    # ---- accepted silently before
    "resume without optimizer.pt": Case("silent", lambda c: _resume(
        c, lambda f: (f / "optimizer.pt").unlink()), "no optimizer.pt"),
    "resume without scheduler.pt": Case("silent", lambda c: _resume(
        c, lambda f: (f / "scheduler.pt").unlink()), "no scheduler.pt"),
    "pickle-only model": Case("silent", lambda c: ["train", c.recipe(model_name_or_path=_pickle_only(c))],
                              "allow_pickle: true"),
    # ---- data lost or made inconsistent before
    "overwrite with a bad column": Case("data-lost", lambda c: (
        c.finished(), ["train", c.recipe(text_column="nope"), "--overwrite_output_dir", "true"])[1], "text_column"),
    "plan into a finished run": Case("data-lost", lambda c: (
        c.finished(), ["plan", c.recipe()])[1], "plan files not written", rc=0),
    "overwrite and resume together": Case("data-lost", lambda c: (
        c.finished(), ["train", c.recipe(), "--overwrite_output_dir", "true", "--resume_from_checkpoint", "true"])[1],
        "both set"),
    "stopped run with a checkpoint": Case("data-lost", lambda c: (
        c.finished("running"), ["train", c.recipe()])[1], "--resume_from_checkpoint true"),
    "finished run without a flag": Case("data-lost", lambda c: (c.finished(), ["train", c.recipe()])[1],
                                        "already holds a finished run"),
    "resume true, every checkpoint broken": Case("data-lost", lambda c: (
        c.finished(), [truncate(c.out / n / "model.safetensors") for n in ("checkpoint-2", "checkpoint-4")],
        ["train", c.recipe(), "--resume_from_checkpoint", "true"])[2], "no complete checkpoint"),
    # ---- limits against hostile inputs
    "image_size far over the model's": Case("hostile", lambda c: ["train", c.image_recipe(image_size=4998)],
                                            "pre-trained at"),
    "image over the pixel budget": Case("hostile", lambda c: [
        "train", c.image_recipe(c.image_rows(str(huge_png(c.data / "bomb.png", 12000, 12000).relative_to(c.data))))],
        "max_image_pixels"),
    "absolute image path outside": Case("hostile", lambda c: (
        shutil.copy(c.shared["images"] / "red" / "red_0.png", c.tmp / "outside.png"),
        ["train", c.image_recipe(c.image_rows(str(c.tmp / "outside.png")))])[1], "allow_outside_paths: true"),
    "../ image path": Case("hostile", lambda c: (
        shutil.copy(c.shared["images"] / "red" / "red_0.png", c.tmp / "up.png"),
        ["train", c.image_recipe(c.image_rows("../up.png"))])[1], "outside"),
    "symlink out of the data folder": Case("hostile", lambda c: [
        "train", c.image_recipe(c.image_rows(_outside_link(c)))], "a link to"),
    "image folder with a link out": Case("hostile", lambda c: ["train", _folder_with_link(c)], "outside"),
    "max_image_pixels 0": Case("hostile", lambda c: ["train", c.image_recipe(max_image_pixels=0)],
                               "`max_image_pixels` must be >= 1"),
    # ---- more of each kind
    "plan into a file": Case("new", lambda c: (c.out.write_text("x"), ["plan", c.recipe()])[1], "is a file"),
    "plan into a stopped run with a checkpoint": Case("new", lambda c: (
        c.finished("running"), ["plan", c.recipe()])[1], "plan files not written", rc=0),
    "push_to_hub without a token": Case("new", lambda c: (
        hub_reachable(c, _raise(RuntimeError("Token is required to call the /whoami-v2 endpoint"))),
        ["train", c.recipe(), "--push_to_hub", "true"])[1], "no valid token"),
    "resume from a folder without weights": Case("new", lambda c: _resume(
        c, lambda f: (f / "model.safetensors").unlink()), "no model weights"),
    "resume from a file": Case("new", lambda c: (
        c.finished(), ["train", c.recipe(), "--resume_from_checkpoint", str(c.out / "README.md")])[1], "not a folder"),
    "sharded weights missing a shard": Case("new", lambda c: _resume(c, lambda f: (
        (f / "model.safetensors").rename(f / "model-00001-of-00002.safetensors"),
        (f / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})))),
        "model-00002-of-00002.safetensors is missing"),
    "image_size on a dual encoder's tower": Case("new", lambda c: [
        "train", c.image_recipe(task="clip", model_name_or_path=str(_tiny_dinov2_dual(c)), image_size=4998)],
        "pre-trained at"),
}


def _tiny_dinov2_dual(ctx: Ctx) -> Path:
    """A VisionTextDualEncoder with a 32 px DINOv2 tower: image_size applies to it."""
    import torch
    from transformers import (BertConfig, BitImageProcessor, BertTokenizer, Dinov2Config,
                              VisionTextDualEncoderConfig, VisionTextDualEncoderModel, VisionTextDualEncoderProcessor)

    folder = ctx.tmp / "dual"
    tokenizer = BertTokenizer.from_pretrained(ctx.shared["bert"])
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8),
        BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=64), projection_dim=16)
    torch.manual_seed(0)
    VisionTextDualEncoderModel(config).save_pretrained(folder)
    processor = BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    VisionTextDualEncoderProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", list(CASES))
def test_catalogue(name, shared, tmp_path, monkeypatch, capsys):
    case, ctx = CASES[name], Ctx(tmp_path, monkeypatch, shared)
    argv = case.argv(ctx)
    before = snapshot(tmp_path)
    if case.rc == 2:
        message = cli_error(capsys, argv)
    else:
        assert main(argv) == case.rc
        message = capsys.readouterr().out
    assert case.fragment in message, message
    assert "weights_only=False" not in message and "Traceback" not in message
    assert snapshot(tmp_path) == before  # nothing written, nothing lost


def test_catalogue_counts():
    """The report's figures: rows per kind."""
    kinds = [case.kind for case in CASES.values()]
    assert {k: kinds.count(k) for k in dict.fromkeys(kinds)} == {
        "traceback": 11, "silent": 3, "data-lost": 6, "hostile": 7, "new": 7}


# ---------------------------------------------------------------- whole runs


def _stdout_of(capsys) -> str:
    return capsys.readouterr().out


def test_a_failed_run_does_not_block_its_corrected_rerun(shared, tmp_path, monkeypatch, capsys):
    """push_to_hub's repo cannot be created: refused once the plan files are written; the rerun reuses the folder."""
    from huggingface_hub import HfApi

    ctx = Ctx(tmp_path, monkeypatch, shared)
    hub_reachable(ctx)
    monkeypatch.setattr(HfApi, "create_repo", _raise(PermissionError("403 Forbidden: no write access to `me`")))
    recipe = ctx.recipe()
    message = cli_error(capsys, ["train", recipe, "--push_to_hub", "true"])
    assert "could not create the Hub repo" in message and "403 Forbidden" in message
    assert run_folder.inspect(ctx.out).kind == "unfinished" and (ctx.out / "plan.md").is_file()
    assert main(["train", recipe]) == 0  # the corrected rerun: no flag needed
    assert f"hftl: reusing {ctx.out}: the run there stopped before its first complete checkpoint." in _stdout_of(capsys)
    assert run_folder.inspect(ctx.out).kind == "finished" and (ctx.out / "model.safetensors").is_file()


def test_a_full_disk_keeps_the_last_good_checkpoint(shared, tmp_path, monkeypatch, capsys):
    """ENOSPC while saving checkpoint-4, then at the final save: each time the last good checkpoint is kept,
    named, and continues; the third run finishes."""
    from transformers import Trainer

    ctx = Ctx(tmp_path, monkeypatch, shared)
    recipe = ctx.recipe(max_steps=4, save_strategy="steps", save_steps=2)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(ctx.out / "checkpoint-4" / "optimizer.pt"))
    save_optimizer = Trainer._save_optimizer_and_scheduler

    def fill_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise full
        return save_optimizer(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", fill_at_step_4)
    message = cli_error(capsys, ["train", recipe])
    assert "Saving checkpoint-4 failed: No space left on device" in message
    assert f"The last checkpoint, {ctx.out / 'checkpoint-2'}, is kept" in message
    assert f"continue with `hftl train {recipe} --resume_from_checkpoint true`" in message
    assert not (ctx.out / "checkpoint-4").exists() and checkpoint_files.problem(ctx.out / "checkpoint-2") is None

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", save_optimizer)
    save_model = Trainer.save_model
    monkeypatch.setattr(Trainer, "save_model", lambda self, output_dir=None, **kw: (
        save_model(self, output_dir, **kw) if output_dir else _raise(full)()))
    message = cli_error(capsys, ["train", recipe, "--resume_from_checkpoint", "true"])
    assert "The final save into" in message and "No space left on device" in message
    assert f"The last checkpoint, {ctx.out / 'checkpoint-4'}, is kept" in message

    monkeypatch.setattr(Trainer, "save_model", save_model)
    assert main(["train", recipe, "--resume_from_checkpoint", "true"]) == 0
    assert f"hftl: resuming from {ctx.out / 'checkpoint-4'} (step 4)." in _stdout_of(capsys)
    assert run_folder.inspect(ctx.out).kind == "finished"


def test_overwrite_removes_the_old_checkpoints_and_a_failed_push_keeps_the_run(shared, tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    ctx = Ctx(tmp_path, monkeypatch, shared)
    old = (ctx.finished() / "model.safetensors").read_bytes()
    hub_reachable(ctx)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, name, **kw: SimpleNamespace(repo_id=f"me/{name}"))
    monkeypatch.setattr(HfApi, "upload_folder", _raise(ConnectionError("the Hub went away")))
    recipe = ctx.recipe(seed=7)
    assert main(["train", recipe, "--overwrite_output_dir", "true", "--push_to_hub", "true"]) == 2
    printed = capsys.readouterr()
    assert "removed its 2 checkpoint(s) (checkpoint-2, checkpoint-4)." in printed.out
    message = printed.err.strip().splitlines()[-1]
    assert message.startswith(f"hftl: error: The run is complete in {ctx.out}") and "Traceback" not in printed.err
    assert "the Hub went away" in message and f"`hf upload me/out {ctx.out}`" in message
    assert not checkpoint_files.checkpoints(ctx.out)  # a later resume cannot continue the overwritten run
    assert run_folder.inspect(ctx.out).kind == "finished" and (ctx.out / "model.safetensors").read_bytes() != old
    message = cli_error(capsys, ["train", recipe, "--resume_from_checkpoint", "true"])
    assert "holds no checkpoint-* folder" in message


def test_resume_true_skips_incomplete_checkpoints_and_names_the_one_it_continues(shared, tmp_path, monkeypatch, capsys):
    from hftl.engine.preflight import resolve_resume

    ctx = Ctx(tmp_path, monkeypatch, shared)
    truncate(ctx.checkpoint("checkpoint-4") / "optimizer.pt", keep=0.9)
    assert resolve_resume("true", str(ctx.out)) == str(ctx.out / "checkpoint-2")
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["hftl: skipping checkpoint-4: optimizer.pt does not load (truncated or junk).",
                       f"hftl: resuming from {ctx.out / 'checkpoint-2'} (step 2)."]


def test_a_checkpoint_with_an_empty_json_file_is_incomplete(shared, tmp_path, monkeypatch):
    """A kill mid-save can leave hftl's plan record (or any JSON file) empty while the weights are whole."""
    ctx = Ctx(tmp_path, monkeypatch, shared)
    (ctx.checkpoint("checkpoint-4") / "hftl_plan.json").write_text("")
    assert checkpoint_files.problem(ctx.out / "checkpoint-4") == "hftl_plan.json does not parse (truncated or empty)"


def test_lifted_limits_paths_and_pickles(shared, tmp_path, monkeypatch, capsys):
    """allow_outside_paths reads a `../` path; allow_pickle loads pickle weights, saying so."""
    from hftl.config import load_config
    from hftl.tasks import get_task

    ctx = Ctx(tmp_path, monkeypatch, shared)
    shutil.copy(shared["images"] / "red" / "red_0.png", tmp_path / "up.png")
    config = load_config(ctx.image_recipe(ctx.image_rows("../up.png"), allow_outside_paths=True))
    raw, _ = get_task("image-classification").load_data(config)
    paths = [v["path"] for split in ("train", "validation") for v in raw[split]["image"]]
    assert str(tmp_path / "data" / ".." / "up.png") in paths
    assert main(["plan", ctx.recipe(model_name_or_path=_pickle_only(ctx), allow_pickle=True)]) == 0
    assert "hftl: loading pickle weights pytorch_model.bin" in capsys.readouterr().out


def test_ctrl_c_names_the_last_checkpoint_and_the_resume_command(shared, tmp_path, monkeypatch, capsys):
    """A real SIGINT to this process right after checkpoint-2 is written: exit 130, one line, no traceback."""
    from hftl.engine.trainer import TransferTrainer

    save = TransferTrainer._save_checkpoint

    def save_then_ctrl_c(self, model, trial):
        save(self, model, trial)
        os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt here, as for a Ctrl-C in a terminal

    monkeypatch.setattr(TransferTrainer, "_save_checkpoint", save_then_ctrl_c)
    ctx = Ctx(tmp_path, monkeypatch, shared)
    recipe = ctx.recipe(max_steps=1000, save_strategy="steps", save_steps=2)
    assert main(["train", recipe]) == 130
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err + printed.out and "KeyboardInterrupt" not in printed.err
    assert printed.err.strip().splitlines()[-1] == (
        f"hftl: interrupted. The last checkpoint, {ctx.out / 'checkpoint-2'}, is kept: continue with "
        f"`hftl train {recipe} --resume_from_checkpoint true`.")
    assert checkpoint_files.problem(ctx.out / "checkpoint-2") is None
    assert run_folder.inspect(ctx.out).kind == "unfinished"  # a rerun without resume is told to resume
