"""Spreadsheet-safe CSV cells: the one rule, for Python and for SQL.

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and, in some, a tab
or a carriage return) as a formula. Such a cell gets a leading ``'``, which spreadsheets show
as text, unless the whole cell is a plain number such as ``-0.12`` or ``+44`` (a number runs
nothing, and quoting it would turn coordinates and counts into text).

The rejected-row CSV (``ingestion.selectors``) applies ``safe_cell`` in Python; the places
CSV (``places.serving.features``) is written by PostgreSQL with ``safe_cell_sql``. Both are
built from the same two constants, and a property test checks that they agree.
"""

from __future__ import annotations

import re

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# ASCII digits only, written the same way for Python's re and PostgreSQL's regular
# expressions (``\d`` would also take other scripts' digits in Python).
PLAIN_NUMBER = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
QUOTE = "'"

_PLAIN_NUMBER = re.compile(PLAIN_NUMBER)
_SQL_ESCAPES = {"\t": r"\t", "\r": r"\r"}


def safe_cell(text: str) -> str:
    """``text`` as a cell a spreadsheet shows rather than runs (see the module docstring)."""
    if text.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return QUOTE + text
    return text


def _formula_start_class() -> str:
    # A bracket expression; '-' goes last so that it means itself, not a range.
    chars = sorted(FORMULA_START, key=lambda c: c == "-")
    return "[" + "".join(_SQL_ESCAPES.get(c, c) for c in chars) + "]"


def safe_cell_sql(text_sql: str) -> str:
    """An SQL expression giving ``safe_cell`` of the text expression ``text_sql``.

    ``text_sql`` must be of type text and not NULL (coalesce it first). The patterns are
    constants of this module, never input, so they are written into the statement.
    """
    starts = "^" + _formula_start_class()
    number = "^(" + PLAIN_NUMBER + ")$"
    return (
        f"CASE WHEN ({text_sql}) ~ '{starts}' AND ({text_sql}) !~ '{number}' "
        f"THEN '{QUOTE}{QUOTE}' || ({text_sql}) ELSE ({text_sql}) END"
    )
