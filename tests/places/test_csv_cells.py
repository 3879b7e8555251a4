"""One spreadsheet-safe rule: the Python and the SQL renderings agree on any text."""

from __future__ import annotations

import pytest
from django.db import connection
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingestion.selectors import spreadsheet_safe
from places.csv_cells import FORMULA_START, PLAIN_NUMBER, safe_cell, safe_cell_sql

pytestmark = pytest.mark.django_db

# PostgreSQL text cannot hold NUL; lone surrogates are not text at all.
TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))
CELLS = st.one_of(
    TEXT,
    st.builds(lambda start, rest: start + rest, st.sampled_from(FORMULA_START), TEXT),
    st.from_regex(PLAIN_NUMBER, fullmatch=True),
    st.from_regex(r"[+-][0-9 .eE+\-]{0,6}", fullmatch=True),
)


def _in_sql(text: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {safe_cell_sql('%(text)s::text')}", {"text": text})
        return cursor.fetchone()[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=CELLS)
@example(text="=1+2")
@example(text="-0.12")
@example(text="+44 20")
@example(text="@x")
@example(text="\t=x")
@example(text="\r")
@example(text="-")
@example(text="1e5")
@example(text="-1e5\n")
@example(text="-\u0661")  # an Arabic-Indic digit is not a plain number in either
def test_sql_and_python_renderings_agree(text):
    assert _in_sql(text) == safe_cell(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("=1+2", "'=1+2"),
        ("-0.12", "-0.12"),
        ("+44 20", "'+44 20"),
        ("@x", "'@x"),
        ("\t=x", "'\t=x"),
        ("\r", "'\r"),
        ("-", "'-"),
        ("a=b", "a=b"),
    ],
)
def test_formulas_get_a_quote_and_plain_numbers_do_not(text, expected):
    assert safe_cell(text) == expected
    assert _in_sql(text) == expected
    # the rejected-rows CSV uses the same rule
    assert spreadsheet_safe(text) == expected
