"""Checks of LLM training text before it is tokenised, so a bad file fails with its name and line.

`datasets` reports an empty, binary or non-UTF-8 file, a broken `.jsonl` line or a number where the
text should be as a DatasetGenerationError or a TypeError deep in the tokenizer, naming neither the
file nor the record. `check_local_files` reads every local file once (streaming) and raises a
DataError naming the file and the line; `check_column` does the same for the records of any dataset
(a Hub dataset, a `save_to_disk` directory). Both run only while a token cache is built.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

from tempnet.errors import DataError

__all__ = ["check_local_files", "check_column", "record_fields"]

_CHUNK = 1 << 20


def record_fields(data) -> tuple[str, ...]:
    """The string fields every record must have: the text column (packed) or instruction and output (alpaca)."""
    return ("instruction", "output") if data.format == "alpaca" else (data.text_field,)


def _text_lines(path: Path):
    """(line number, line) of a UTF-8 text file; a NUL byte or an invalid byte is a DataError naming the offset."""
    decoder, offset, pending, number = codecs.getincrementaldecoder("utf-8")(), 0, "", 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            nul = chunk.find(b"\0")
            if nul >= 0:
                raise DataError(f"{path} is a binary file, not text (a NUL byte at offset {offset + nul})")
            try:
                text = pending + decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {offset + err.start})") from None
            offset += len(chunk)
            *lines, pending = text.split("\n")
            for line in lines:
                number += 1
                yield number, line
        try:
            pending += decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"{path} is not UTF-8 text (it ends inside a multi-byte character)") from None
    if pending:
        yield number + 1, pending


def _check_record(record, fields: tuple[str, ...], where: str) -> bool:
    """Whether the record holds any text; a DataError if it is not an object or a field is not a string."""
    if not isinstance(record, dict):
        raise DataError(f"{where} is not a JSON object: {json.dumps(record)[:80]}")
    for name in fields:
        value = record.get(name)
        if name not in record:
            hint = f" (data.text_field names it; the record has {sorted(record)})" if fields == (name,) else ""
            raise DataError(f"{where} has no {name!r} field{hint}")
        if not isinstance(value, str):
            raise DataError(f"{where}: its {name!r} is {json.dumps(value)[:80]} ({type(value).__name__}), "
                            "not a string")
    return any(record[name].strip() for name in fields)


def check_local_files(data) -> None:
    """Every file of `data.files` is non-empty UTF-8 text holding some non-blank text; every `.json` /
    `.jsonl` record is an object whose text fields are strings. DataError naming the file and line."""
    fields, any_text = record_fields(data), False
    for f in map(Path, data.files):
        if f.stat().st_size == 0:
            raise DataError(f"data file {f} is empty")
        lines = _text_lines(f)
        if f.suffix == ".txt":
            any_text |= any(line.strip() for _, line in lines)
            continue
        first = next((item for item in lines if item[1].strip()), None)
        if first is None:
            continue
        if first[1].lstrip().startswith("["):  # one JSON array of records
            try:
                records = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise DataError(f"{f} is not valid JSON: {err}") from None
            for i, record in enumerate(records if isinstance(records, list) else [records]):
                any_text |= _check_record(record, fields, f"record {i} of {f}")
            continue
        for number, line in [first, *lines]:  # JSON lines
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"line {number} of {f} is not valid JSON ({err.msg}): {line.strip()[:80]!r}") from None
            any_text |= _check_record(record, fields, f"line {number} of {f}")
    if not any_text:
        raise DataError(f"the data files {[str(f) for f in data.files]} hold no text (only whitespace)")


def check_column(records, name: str, what: str) -> None:
    """Column `name` of a `datasets.Dataset` holds only strings (no numbers, no nulls), and some non-blank one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = records.with_format("arrow")[name]  # the column as arrow, honouring any select / filter
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"{what}: column {name!r} holds {column.type} values, not text")
    if column.null_count:
        index = pc.index(pc.is_null(column), True).as_py()
        raise DataError(f"{what}: record {index} has no {name!r} text (null)")
    if len(column) and not pc.any(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)).as_py():
        raise DataError(f"{what}: column {name!r} holds no text (only whitespace)")
