"""Reading a recipe file: UTF-8 text holding one flat YAML mapping of `key: value` lines.

Refused with the line named: bytes that are not UTF-8, a key given twice (YAML would keep the last
one silently), and aliases (`*name`): a recipe has no use for them, and expanding them is how an
812-byte "billion laughs" file fills the memory. Only yaml's safe constructors run, so no tag in a
recipe executes code. Nothing here imports torch or transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hftl.errors import HftlError

EXAMPLE = "`hftl train recipes/demo/text-classification.yaml`"


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and repeated keys, naming the lines."""

    path = ""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise HftlError(
                f"Recipe `{self.path}` uses the YAML alias `*{event.anchor}` at line {event.start_mark.line + 1}. "
                "Recipes take no anchors or aliases (`&name`, `*name`, `<<:`): write the value out at each key that "
                "needs it."
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            name = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if _hashable(name) and name in seen:
                raise HftlError(
                    f"Recipe `{self.path}` sets `{name}` twice, at lines {seen[name]} and {line}; YAML would keep the "
                    "last one silently. Keep one of them."
                )
            if _hashable(name):
                seen[name] = line
        return super().construct_mapping(node, deep=deep)


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def read_recipe(path: str) -> dict[str, Any]:
    """The recipe's keys and values, every problem of the file itself reported with its line."""
    values = _parse(path, _text(path))
    if values is None:
        raise HftlError(
            f"Recipe `{path}` is empty: it sets no keys. A recipe needs at least `model_name_or_path` and the data "
            f"(`dataset` or `train_file`); see {EXAMPLE}."
        )
    if not isinstance(values, dict):
        raise HftlError(f"Recipe `{path}` must be a mapping of `key: value` lines, not a {type(values).__name__}.")
    return values


def _text(path: str) -> str:
    recipe = Path(path)
    if recipe.is_dir():
        raise HftlError(f"Recipe `{path}` is a folder, not a file. Pass the path of a YAML recipe in it, e.g. "
                        f"{EXAMPLE}.")
    if not recipe.is_file():
        raise HftlError(f"Recipe file `{path}` does not exist. Pass the path of a YAML recipe, e.g. {EXAMPLE}.")
    try:
        data = recipe.read_bytes()
    except OSError as err:
        raise HftlError(f"Recipe `{path}` cannot be read ({err.strerror}). Check its permissions.") from None
    return decode_utf8(data, f"Recipe `{path}`", "Save it as UTF-8")


def decode_utf8(data: bytes, what: str, fix: str) -> str:
    """`data` as text, or an error naming the line and column of the first byte that is not UTF-8."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise HftlError(f"{what} is UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8. {fix}.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise HftlError(
            f"{what} is not UTF-8 text: byte 0x{data[err.start]:02x} at line {line}, column {column} is not valid "
            f"UTF-8 (a Latin-1 or Windows-1252 file?). {fix}."
        ) from None


def _parse(path: str, text: str):
    loader = _RecipeLoader(text)
    loader.path = path
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if "single document" in str(getattr(err, "context", "")):
            raise HftlError(f"Recipe `{path}` holds more than one YAML document (a `---` line{where}); a recipe is one "
                            "mapping of `key: value` lines. Remove the `---` and merge the keys.") from None
        if isinstance(err, yaml.constructor.ConstructorError) and "tag" in problem:
            raise HftlError(f"Recipe `{path}` uses a YAML tag{where} ({problem}). Recipes take plain values (text, "
                            "numbers, true/false, lists): drop the `!!` tag.") from None
        raise HftlError(f"Recipe `{path}` is not valid YAML{where}: {problem}. Fix the YAML syntax there.") from None
    finally:
        loader.dispose()
