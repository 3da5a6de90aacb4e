"""A strict CSV reader for the downstream dataset tables: every row must have the header's width.

pandas silently turns surplus leading fields into an index, so a line with one field too many
would shift every column; this reader names the file and the line instead.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from ..io.errors import ManifestError

__all__ = ["read_csv_strict"]


def read_csv_strict(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV with a header line into str columns, plus ``line`` (1-based line of each row).

    Blank lines are skipped. Field values are stripped.

    Raises:
        ManifestError: missing file, not UTF-8, no header, or a row whose field count differs
            from the header's (the message names the file and the line).
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"{what} {p} not found")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{p}: not UTF-8 text ({e})") from e
    rows, lines, header = [], [], None
    reader = csv.reader(text.splitlines())
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        fields = [f.strip() for f in fields]
        if header is None:
            header = fields
            continue
        if len(fields) != len(header):
            raise ManifestError(f"{p}: line {line}: {len(fields)} fields but the header has {len(header)} "
                                f"({', '.join(header)})")
        rows.append(fields)
        lines.append(line)
    if header is None:
        raise ManifestError(f"{p}: empty file; expected a header line")
    df = pd.DataFrame(rows, columns=header, dtype=str) if rows else pd.DataFrame(columns=header, dtype=str)
    df["line"] = pd.Series(lines, dtype="int64")
    return df
