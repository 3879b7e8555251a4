"""The change feed's HTTP answer outside the view (``ingestion.edge.serving``): the limit
parameter, the ETag and 304 rule, and the errors it names a field for."""

from __future__ import annotations

import json

import pytest

from ingestion.edge import selectors
from ingestion.edge.serving import ChangesQueryInvalid, changes_limit_parse, changes_respond
from tests.ingestion.edge.factories import node_make


@pytest.mark.parametrize(
    ("raw", "limit"), [(None, selectors.DEFAULT_LIMIT), ("1", 1), ("5000", 5000), ("0042", 42)]
)
def test_a_limit_in_ascii_digits_within_range_is_taken(raw, limit):
    assert changes_limit_parse(raw) == limit


@pytest.mark.parametrize("raw", ["", "0", "5001", "-1", "1e3", "²", "١", "１", " 5", "12345"])
def test_any_other_limit_is_refused_naming_the_field(raw):
    with pytest.raises(ChangesQueryInvalid) as refused:
        changes_limit_parse(raw)
    assert refused.value.field == "limit"
    assert "1 to 5000" in refused.value.message


@pytest.mark.django_db
def test_a_page_that_moves_the_cursor_is_sent_even_to_a_matching_etag():
    # given a node and the ETag its first snapshot page will carry
    node = node_make()
    first = changes_respond(
        node=node, cursor=None, raw_limit=None, if_none_match="", accept_encoding=""
    )
    etag = first["ETag"]
    # when the same request names that ETag: the snapshot's cursor moved, so no 304
    again = changes_respond(
        node=node, cursor=None, raw_limit=None, if_none_match=etag, accept_encoding=""
    )
    assert again.status_code == 200
    assert first["Content-Type"] == "application/json"
    assert json.loads(first.content)["snapshot"] is True


@pytest.mark.django_db
def test_a_cursor_not_given_out_is_refused_naming_the_field():
    with pytest.raises(ChangesQueryInvalid) as refused:
        changes_respond(
            node=node_make(),
            cursor="not-a-cursor",
            raw_limit="10",
            if_none_match="",
            accept_encoding="",
        )
    assert refused.value.field == "cursor"
