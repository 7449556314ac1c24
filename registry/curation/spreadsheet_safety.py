"""CSV cells a spreadsheet would run as a formula are neutralised (OWASP "CSV injection"): a text cell that
starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'`, unless it is a number (a
longitude of -1.5 stays a number). Names, notes and paths come from manifests and reviewers, so every CSV the
registry writes passes its cells through here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def safe_cell(value: Any) -> Any:
    """The value as a spreadsheet may show it: text that would start a formula is quoted; numbers are not."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _is_number(value.strip()):
        return "'" + value
    return value


def safe_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key: safe_cell(value) for key, value in row.items()}


def safe_cells(row: Iterable[Any]) -> list[Any]:
    return [safe_cell(value) for value in row]
