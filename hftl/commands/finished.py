"""A finished run, read back for `hftl evaluate` and `hftl predict`: its folder checked, its resolved recipe
(`hftl_config.yaml`) loaded, the saved model and processor built through the task's own loading, and the new data
read with the run's column and preprocessing keys, so new rows are prepared exactly as its eval data was.

Also the two commands' own options (a strict parser: an unknown option is an error naming the nearest) and the
checks on where they write: every check runs before the first file is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from hftl.errors import HftlError

RUN_FILES = ("a run folder written by `hftl train` holds hftl_config.yaml (the resolved recipe), config.json and "
             "model.safetensors (the model; adapter_model.safetensors for LoRA without merge_lora) and its tokenizer "
             "or image processor files")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
ADAPTERS = "adapter_model.safetensors"  # a LoRA run saved without merge_lora: adapters and head on the base model
PROCESSOR_FILES = ("tokenizer_config.json", "tokenizer.json", "preprocessor_config.json", "processor_config.json")
# where the run's own data came from (dropped for new data); its other data keys describe rows and their preprocessing
SOURCE_KEYS = ("dataset", "dataset_config", "train_file", "validation_file", "test_file", "image_root",
               "max_train_samples", "max_eval_samples")
# what new data may set in place of the runs own
DATA_KEYS = ("text_column", "text_pair_column", "label_column", "image_column", "image_root")


@dataclass
class Finished:
    """A saved run ready for new data: the run's recipe (data keys pointing at the new data), task, model, labels."""

    folder: Path
    config: object  # hftl.config.RunConfig
    task: object  # hftl.tasks.base.Task
    loaded: object  # hftl.tasks.base.Loaded
    labels: object  # hftl.tasks.classification.Labels


def check_folder(folder: str) -> Path:
    """The run folder's files, named when missing; no model is loaded yet."""
    path = Path(folder)
    if not path.is_dir():
        raise HftlError(f"Run folder `{folder}` does not exist; {RUN_FILES}. Pass the output_dir of a finished run.")
    missing = [f"`{n}`" for n in ("hftl_config.yaml", "config.json") if not (path / n).is_file()]
    if not any((path / n).is_file() for n in (*WEIGHTS, ADAPTERS)):
        missing.append("`model.safetensors`")
    if not any((path / n).is_file() for n in PROCESSOR_FILES):
        missing.append("a tokenizer or image processor (`tokenizer_config.json` or `preprocessor_config.json`)")
    if missing:
        raise HftlError(f"`{folder}` is not a finished hftl run: it lacks {', '.join(missing)}; {RUN_FILES}. "
                        "Pass the output_dir of a finished `hftl train`.")
    return path


def open_run(folder: str, data: dict) -> Finished:
    """The run's recipe with `data` (DataArgs values of the new data) in place of its own data keys, and its saved
    model built by the task (trust_remote_code off, safetensors)."""
    from hftl.config import load_config
    from hftl.tasks import TASKS, get_task
    from hftl.tasks.classification import run_labels

    path = check_folder(folder)
    config = load_config(str(path / "hftl_config.yaml"), check_paths=False)  # its data or base model may have moved
    task = get_task(config.transfer.task)
    if not task.capabilities.finished_runs:
        able = [n for n in TASKS if get_task(n).capabilities.finished_runs]
        hint = " Score a dual encoder on new data with `hftl train` and `clip_mode: zero_shot`." \
            if task.capabilities.zero_shot else ""
        raise HftlError(f"`{folder}` is a {task.name} run; hftl evaluate and hftl predict read "
                        f"{', '.join(able)} runs.{hint}")
    new_data = dataclasses.replace(config.data, **{**dict.fromkeys(SOURCE_KEYS), **data})
    config = dataclasses.replace(config, data=new_data)
    try:
        labels = run_labels(json.loads((path / "config.json").read_text()), config.data.label_column)
    except ValueError as err:
        raise HftlError(f"`{path / 'config.json'}` is not valid JSON ({err}); {RUN_FILES}.") from None
    if not labels.names:
        raise HftlError(f"`{path / 'config.json'}` names no labels (id2label); {RUN_FILES}.")
    config, loaded = _model(config, task, path, labels)
    return Finished(path, config, task, loaded, labels)


def _model(config, task, path: Path, labels):
    """(the config that loaded it, the saved model): the folder's own weights, or for a LoRA run saved as adapters
    the base model the run started from with its adapters and head, merged for inference."""
    adapters = not any((path / n).is_file() for n in WEIGHTS)
    source = config.model.model_name_or_path if adapters else str(path)
    model_args = dataclasses.replace(config.model, model_name_or_path=source, trust_remote_code=False,
                                     from_scratch=False, **({} if adapters else {"revision": "main"}))
    config = dataclasses.replace(config, model=model_args)
    loaded = task.build_model(config, labels)
    if adapters:
        from peft import PeftModel

        loaded.model = PeftModel.from_pretrained(loaded.model, str(path)).merge_and_unload()
    return config, loaded


def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- options and output paths


class Parser(argparse.ArgumentParser):
    """Options of one command; bad ones are an HftlError (one paragraph, exit 2) naming the nearest valid one."""

    def __init__(self, command: str, usage: str):
        super().__init__(prog=f"hftl {command}", usage=usage, allow_abbrev=False, add_help=False)
        self.command = command
        self.add_argument("run_dir", nargs="?")

    def error(self, message: str):  # argparse's wording, with the option quoted
        message = re.sub(r"argument (--\w+)(/[-\w]+)*:", r"`\1`:", message)
        raise HftlError(f"hftl {self.command}: {message}. Usage: {self.usage}")

    def parse(self, argv: list[str]) -> argparse.Namespace:
        args, unknown = self.parse_known_args(argv)
        if unknown:
            flag = next((u for u in unknown if u.startswith("-")), unknown[0])
            options = [o for a in self._actions for o in a.option_strings]
            near = difflib.get_close_matches(flag.split("=")[0], options, n=1)
            hint = f" Did you mean `{near[0]}`?" if near else ""
            raise HftlError(f"hftl {self.command} has no option `{flag}`.{hint} Options: {', '.join(options)}.")
        if not args.run_dir:
            raise HftlError(f"hftl {self.command} needs a run folder (the output_dir of `hftl train`). Usage: "
                            f"{self.usage}")
        return args


def boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"takes true or false, not `{value}`")
    return value.lower() == "true"


def data_options(parser: Parser, labelled: bool) -> None:
    for key in DATA_KEYS:
        if labelled or key != "label_column":
            parser.add_argument(f"--{key}", help="default: the run's" if key != "image_root" else
                                "where relative image paths start (default: the data file's folder)")


def data_values(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in DATA_KEYS if getattr(args, k, None) is not None}


def check_new_file(path: str, overwrite: bool, run: Path, what: str) -> Path:
    """A file about to be written: its folder exists, it does not (unless `overwrite`), it is none of the run's."""
    out = Path(path)
    if not out.parent.is_dir():
        raise HftlError(f"The folder of {what} `{path}` does not exist. Create it first, or write elsewhere.")
    if out.resolve().parent == run.resolve() and out.exists():
        raise HftlError(f"{what} `{path}` is one of the run's own files; hftl never writes over them. Write elsewhere.")
    if out.exists() and not overwrite:
        raise HftlError(f"{what} `{path}` exists. Pass `--overwrite true` to replace it, or write elsewhere.")
    return out
