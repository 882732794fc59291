"""Unlabelled rows streamed from a file or an image folder, for `hftl predict`.

One row at a time, never the whole file in memory, each with where a user finds it: its line in a csv, tsv or
jsonl file, its position in a json array or parquet file, its path in an image folder. A row that cannot be read
(a jsonl line that is not JSON) comes as a `BadRow` in place of the row, so it is named or skipped like any other.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hftl.data.images import IMAGE_EXTENSIONS
from hftl.errors import BadRow, HftlError

TYPES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
CHUNK = 512  # parquet rows read at a time


@dataclass
class Rows:
    columns: list[str]
    total: int | None  # known without reading the rows (parquet, a folder), else None
    items: Iterator[tuple[int, str, dict | BadRow]]  # (row number from 1, where it is, the row)


def open_rows(path: str, folder_column: str | None = None) -> Rows:
    """The rows of `path`; a folder is a column `folder_column` of image paths (image tasks only)."""
    source = Path(path)
    if source.is_dir():
        if not folder_column:
            raise HftlError(f"Input `{path}` is a folder; this run reads rows of text. Give a file "
                            f"({', '.join(TYPES)}).")
        files = sorted(str(f) for f in source.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise HftlError(f"The folder `{path}` holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
        return Rows([folder_column], len(files), ((i, f, {folder_column: f}) for i, f in enumerate(files, 1)))
    if not source.is_file():
        raise HftlError(f"Input `{path}` does not exist. Pass a file ({', '.join(TYPES)}) or a folder of images.")
    suffix = source.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _delimited(source, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _parquet(source)
    if suffix in (".json", ".jsonl"):
        return _json(source)
    raise HftlError(f"Input `{path}` has an unsupported type `{suffix or '(none)'}`. Use one of: {', '.join(TYPES)}.")


def _delimited(path: Path, delimiter: str) -> Rows:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents are one field
    f = open(path, newline="", encoding="utf-8-sig")
    reader = csv.DictReader(f, delimiter=delimiter)
    try:
        columns = list(reader.fieldnames or [])
    except UnicodeDecodeError:
        f.close()
        raise HftlError(f"`{path}` is not UTF-8 text. Save it as UTF-8.") from None
    if not columns:
        f.close()
        raise HftlError(f"`{path}` is empty: it has no header line with the column names.")

    def items():
        with f:
            try:
                for number, row in enumerate(reader, 1):
                    yield number, f"line {reader.line_num}", row
            except UnicodeDecodeError:
                raise HftlError(f"`{path}` is not UTF-8 text after line {reader.line_num}. Save it as UTF-8.") from None

    return Rows(columns, None, items())


def _parquet(path: Path) -> Rows:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise HftlError(f"`{path}` cannot be read as parquet ({err}).") from None

    def items():
        number = 0
        for batch in table.iter_batches(batch_size=CHUNK):
            for row in batch.to_pylist():
                number += 1
                yield number, f"row {number}", row

    return Rows(list(table.schema_arrow.names), table.metadata.num_rows, items())


def _json(path: Path) -> Rows:
    """A json array (read whole: json has no streaming reader in the standard library) or json lines (streamed)."""
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise HftlError(f"`{path}` is not valid JSON ({err}).") from None
        items = ((i, f"item {i}", r if isinstance(r, dict) else BadRow("not a JSON object"))
                 for i, r in enumerate(rows, 1))
        return Rows(sorted({k for r in rows if isinstance(r, dict) for k in r}), len(rows), items)
    first = next((_line(line) for line in open(path, encoding="utf-8") if line.strip()), None)
    if not isinstance(first, dict):
        raise HftlError(f"`{path}` holds no JSON objects (one per line, or an array of them).")

    def items():
        number = 0
        with open(path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, 1):
                if line.strip():
                    number += 1
                    yield number, f"line {line_number}", _line(line)

    return Rows(list(first), None, items())


def _line(line: str) -> dict | BadRow:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return BadRow(f"not valid JSON ({err.msg})")
    return row if isinstance(row, dict) else BadRow("not a JSON object")
