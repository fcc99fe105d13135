"""Read text from the user's own files: plain text, WikiText .raw, JSON lines / JSON, CSV and Parquet.

Both calibration and evaluation read through `read_text`, so one file gives the same string to both.
Rows are joined with "\\n\\n", the convention of the SparseGPT and Wanda evaluations.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from ..errors import UserError

PLAIN = {".txt", ".md", ".text", ".raw"}
TABULAR = {".jsonl", ".json", ".csv", ".parquet"}
SUPPORTED = sorted(PLAIN | TABULAR)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_rows(path: str | Path, text_field: str = "text") -> list[str]:
    """The file's text as rows (documents, lines of a .raw file, or records' text field)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file.")
    suffix = path.suffix.lower()
    if suffix not in PLAIN and suffix not in TABULAR:
        raise UserError(f"{path.name}: unsupported file type {suffix or '(none)'}; use one of {', '.join(SUPPORTED)}.")
    if suffix == ".parquet":
        return _parquet_rows(path, text_field)
    text = _decode(path)
    if suffix == ".raw":
        # WikiText .raw: one Hugging Face row per line, blank rows stored as " \n" (see SOURCE.md).
        return [line if line.strip() else "" for line in text.splitlines(keepends=True)]
    if suffix in PLAIN:
        return [text]
    if suffix == ".csv":
        return _csv_rows(path, text, text_field)
    return _json_rows(path, text, text_field)


def read_text(path: str | Path, text_field: str = "text") -> str:
    return "\n\n".join(read_rows(path, text_field))


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise UserError(f"{path.name} looks binary, not text: pass a text, JSON lines, CSV or Parquet file.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path.name} is not UTF-8 text (bad byte at offset {exc.start}): convert it to UTF-8.") from None
    return text.removeprefix("\ufeff")   # the byte-order mark Notepad and Excel put first is no part of the text


def _field(record, path: Path, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or text_field not in record:
        keys = ", ".join(map(str, record.keys())) if isinstance(record, dict) else type(record).__name__
        raise UserError(f"{path.name}: {where} has no field {text_field!r} (found: {keys}); choose the text field.")
    value = record[text_field]
    return "" if value is None else str(value)


def _json_rows(path: Path, text: str, text_field: str) -> list[str]:
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith(("[", "{")):
        # One JSON document (a list of records, or a single record spread over lines); a .json file of
        # JSON lines also starts with "{" and fails this parse, so it falls through to the line reader.
        try:
            document = _loads(text)
        except json.JSONDecodeError as exc:
            if stripped.startswith("["):
                raise UserError(f"{path.name}: invalid JSON at line {exc.lineno}: {exc.msg}.") from None
        else:
            records = document if isinstance(document, list) else [document]
            return [_field(r, path, text_field, f"record {i}") for i, r in enumerate(records)]
    rows = []
    # Records end at "\n" only: splitlines() would also cut inside strings holding U+2028 or U+0085.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = _loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path.name}: line {number} is not valid JSON ({exc.msg}).") from None
        rows.append(_field(record, path, text_field, f"line {number}"))
    return rows


def _loads(text: str):
    """`json.loads`, with every refusal a JSONDecodeError: it raises ValueError for integers of over 4300
    digits and RecursionError for arrays nested too deep."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as exc:
        raise json.JSONDecodeError(str(exc) or type(exc).__name__, text, 0) from None


def _csv_rows(path: Path, text: str, text_field: str) -> list[str]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))   # the default 128 KiB refuses long documents
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if reader.fieldnames is None or text_field not in reader.fieldnames:
            found = ", ".join(reader.fieldnames or [])
            raise UserError(f"{path.name}: no column {text_field!r} (found: {found}); choose the text column.")
        return [row[text_field] or "" for row in reader]
    except csv.Error as exc:
        raise UserError(f"{path.name}: not a readable CSV file (line {reader.line_num}: {exc}).") from None


def _parquet_rows(path: Path, text_field: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise UserError("reading Parquet needs the pyarrow package: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise UserError(f"{path.name} is not a readable Parquet file: {exc}") from None
    if text_field not in table.column_names:
        raise UserError(f"{path.name}: no column {text_field!r} (found: {', '.join(table.column_names)}); choose the text column.")
    return ["" if v is None else str(v) for v in table.column(text_field).to_pylist()]
