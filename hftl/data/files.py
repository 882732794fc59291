"""Local data files (csv, tsv, json, jsonl, parquet): checked before `datasets` reads them, and
diagnosed when it fails.

`datasets` reports a malformed local file as "An error occurred while generating the dataset",
naming neither the file nor the line, and reads some bytes that are not UTF-8 without a word.
Here each file is checked first (a folder, a missing or empty file, text that is not UTF-8, a
`.parquet` that is not Parquet, a tab-separated `.csv`), and a failure of the reader is turned
into the file, the line and what is wrong with it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from hftl.errors import HftlError, first_line

FORMATS = {".csv": "CSV", ".tsv": "TSV (tab-separated)", ".json": "JSON", ".jsonl": "JSON Lines", ".parquet": "Parquet"}
BLOCK = 1 << 20


def check(split: str, path: str) -> None:
    """Everything about one data file that can be known before it is parsed."""
    where, target = f"The {split} file `{path}`", Path(path)
    if target.is_dir():
        raise HftlError(f"{where} is a folder, not a file. Set `{split}_file` to a {', '.join(FORMATS)} file in it, or "
                        "`dataset` to the folder itself (an image folder, or a dataset saved with save_to_disk).")
    if not target.is_file():
        raise HftlError(f"{where} does not exist. Check the path in `{split}_file`.")
    suffix = target.suffix.lower()
    if suffix not in FORMATS:
        return  # an unsupported type: data/sources.py names the ones there are
    if suffix == ".parquet":
        _check_parquet(where, target, split)
        return
    bad = first_bad_byte(target)
    if bad is not None:
        line, column, byte = bad
        utf16 = line == 1 and column == 1 and byte in (0xFF, 0xFE)
        hint = " (it starts with a UTF-16 byte-order mark: a UTF-16 export)" if utf16 else ""
        raise HftlError(f"{where} is not UTF-8 text: byte 0x{byte:02x} at line {line}, column {column} is not valid "
                        f"UTF-8{hint}. Save the file as UTF-8 (e.g. from a Latin-1 or Windows-1252 export).")
    if _rows_below(target, 2 if suffix in (".csv", ".tsv") else 1):  # csv/tsv: a header line, then rows
        raise HftlError(f"{where} is empty (0 rows). Point `{split}_file` at a file with examples.")
    if suffix == ".csv":
        header = _first_line(target)
        if "\t" in header and "," not in header:
            raise HftlError(f"{where} looks tab-separated (its header line has tabs and no commas), but a .csv file is "
                            "read comma-separated. Rename it to .tsv, or save it with commas.")


def first_bad_byte(path: Path) -> tuple[int, int, int] | None:
    """(line, column, byte) of the first byte that is not UTF-8, read block by block; None for UTF-8 text."""
    line, carry = 1, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK)
            data = carry + block
            if not data:
                return None
            try:
                data.decode("utf-8")
                good, carry = data, b""
            except UnicodeDecodeError as err:
                if block and err.reason == "unexpected end of data":  # a character split by the block's end
                    good, carry = data[: err.start], data[err.start :]
                else:
                    start = data.rfind(b"\n", 0, err.start) + 1
                    return line + data.count(b"\n", 0, err.start), err.start - start + 1, data[err.start]
            line += good.count(b"\n")


def _rows_below(path: Path, needed: int) -> bool:
    """Fewer than `needed` lines with data (blank lines and a bare `[]` do not count)."""
    found = 0
    with open(path, encoding="utf-8-sig") as f:
        for text in f:
            if text.strip() not in ("", "[", "]", "[]"):
                found += 1
                if found >= needed:
                    return False
    return True


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8-sig") as f:
        return f.readline()


def _check_parquet(where: str, path: Path, split: str) -> None:
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(path.stat().st_size - 4, 0))
        tail = f.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise HftlError(f"{where} is not a Parquet file (it lacks Parquet's PAR1 marks at its start and end: another "
                        "format under a .parquet name, or a truncated copy). Convert it to Parquet, or give it the "
                        "suffix of its real format (.csv, .jsonl, ...).")
    import pyarrow.parquet as pq

    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as err:  # pyarrow raises its own types for a damaged footer
        raise HftlError(f"{where} is a damaged Parquet file ({first_line(err)}). Write it again.") from None
    if rows == 0:
        raise HftlError(f"{where} is empty (0 rows). Point `{split}_file` at a file with examples.")


# ---------------------------------------------------------------- after the reader failed


def diagnose(files: dict[str, str], err: BaseException) -> HftlError:
    """The error for local files `datasets` could not read: the first file and line at fault, else the reader's
    own cause."""
    for split, path in files.items():
        found = _find_fault(Path(path))
        if found:
            line, what = found
            kind = FORMATS.get(Path(path).suffix.lower(), "data")
            return HftlError(f"The {split} file `{path}` is not valid {kind}: line {line}{what}. Fix that line, or "
                             f"save the file as well-formed {kind}.")
    cause = root_cause(err)
    shown = ", ".join(f"{split} `{path}`" for split, path in files.items())
    return HftlError(f"Could not read the local data files ({shown}): {type(cause).__name__}: {first_line(cause)}. "
                     "Check that each file is well-formed in the format its suffix names.")


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a chain: `datasets` wraps the reader's own error in its generic one."""
    seen = {id(err)}
    while (err.__cause__ or err.__context__) is not None and id(err.__cause__ or err.__context__) not in seen:
        err = err.__cause__ or err.__context__
        seen.add(id(err))
    return err


def _find_fault(path: Path) -> tuple[int, str] | None:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _csv_fault(path, "\t" if suffix == ".tsv" else ",")
    if suffix in (".json", ".jsonl"):
        return _json_fault(path)
    return None


def _csv_fault(path: Path, delimiter: str) -> tuple[int, str] | None:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            for row in reader:
                if row and header and len(row) != len(header):
                    return reader.line_num, (f" has {len(row)} fields, the header (line 1) has {len(header)}: a "
                                             f"`{delimiter}` or a quote out of place in `{delimiter.join(row)[:80]}`")
        except csv.Error as err:
            return reader.line_num, f" cannot be parsed ({err}; an unclosed quote starts at or above it)"
    return None


def _json_fault(path: Path) -> tuple[int, str] | None:
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):  # one JSON array of objects
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            return err.lineno, f", column {err.colno}: {err.msg}"
        bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
        return None if bad is None else (1, f" holds an array whose item {bad} is not an object (`{{\"text\": ...}}`)")
    for number, line in enumerate(text.splitlines(), 1):  # JSON Lines: one object per line
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            return number, f", column {err.colno}: {err.msg} (each line must be one complete JSON object)"
        if not isinstance(row, dict):
            return number, f" is a JSON {type(row).__name__}, not an object (`{{\"text\": ..., \"label\": ...}}`)"
    return None
