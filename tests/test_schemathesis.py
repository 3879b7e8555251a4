"""Every operation of the OpenAPI schema, fuzzed by schemathesis against the Django app.

Requests go through WSGI into the real app on the sample data (regions and the GB import):
valid and invalid parameters alike must never give a server error, and every answer (status,
content type, headers, body) must be one the schema documents, and a method the schema does
not list must get 405.

Every request the schema forbids must be refused (negative_data_rejection: an empty filter
value such as ``level=`` is a 400 naming it). Not checked: that every request the schema
allows is accepted (positive_data_acceptance). A filter naming a dataset, country or region
that does not exist, or a ``bbox`` that is a string but not four numbers in range, is a 400
naming the parameter on purpose: a typo said plainly beats an empty page, and the schema
cannot spell "an existing slug".
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from config.wsgi import application


@pytest.fixture
def wsgi_in_the_test_transaction() -> Iterator[None]:
    """Requests run on the test's connection, inside its transaction, as Django's test client
    arranges: the WSGI handler would otherwise close that connection after each request."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


# Loaded while tests are collected: the schema view reads no database.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


@pytest.mark.slow  # a few hundred requests, about a minute
@schema.parametrize()
@settings(
    # Bounded and repeatable: the same examples on every run, no example database.
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@pytest.mark.django_db(databases=["default", "replica"])
def test_api_answers_as_documented(case, gb_import, clear_cache, wsgi_in_the_test_transaction):
    # identity: the WSGI transport does not undo Content-Encoding, so a gzip body would not parse
    case.call_and_validate(
        headers={"Accept-Encoding": "identity"},
        excluded_checks=[positive_data_acceptance],
    )
