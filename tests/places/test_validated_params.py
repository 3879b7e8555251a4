"""Query parameters validated once per process: the same answers, the same refusals, and
nothing remembered that the database could change."""

from __future__ import annotations

import pytest
from django.http import QueryDict
from rest_framework.exceptions import ValidationError

from places.services import dataset_get_or_create
from places.serving.params import (
    PlaceFiltersQuery,
    ViewportQuery,
    _validated_remembered,
    filters_validated,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _forget():
    _validated_remembered.cache_clear()
    yield
    _validated_remembered.cache_clear()


def _serializer(query_class, text: str):
    query = query_class(data=QueryDict(text))
    query.is_valid(raise_exception=True)
    return query


def test_a_remembered_query_gives_what_the_serializer_gives_and_is_validated_once():
    text = "bbox=-0.2,51.45,0.0,51.55&zoom=12&format=bin&religion=christian&status=any"
    direct = _serializer(ViewportQuery, text)
    first = filters_validated(ViewportQuery, QueryDict(text))
    # when: the same parameters again, in another order
    again = filters_validated(
        ViewportQuery,
        QueryDict("status=any&religion=christian&format=bin&zoom=12&bbox=-0.2,51.45,0.0,51.55"),
    )
    # then
    assert dict(first.data) == dict(direct.validated_data)
    assert first.filters == direct.place_query(bbox=direct.validated_data["bbox"])
    assert again == first
    info = _validated_remembered.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    # and what is handed out cannot be changed by the caller
    with pytest.raises(TypeError):
        first.data["zoom"] = 3  # type: ignore[index]


def test_refusals_name_the_parameter_and_are_not_remembered():
    for _ in range(2):
        with pytest.raises(ValidationError) as refused:
            filters_validated(ViewportQuery, QueryDict("bbox=0,0,1,1&zoom=99"))
        assert "zoom" in refused.value.detail
    assert _validated_remembered.cache_info().currsize == 0


def test_a_dataset_named_is_looked_up_each_time():
    query = QueryDict("dataset=validated-params-later")
    # given: no such dataset yet
    with pytest.raises(ValidationError) as refused:
        filters_validated(PlaceFiltersQuery, query)
    assert "dataset" in refused.value.detail
    # when: it is made
    dataset = dataset_get_or_create(slug="validated-params-later")
    # then: the same query finds it, and nothing was remembered
    assert filters_validated(PlaceFiltersQuery, query).filters.dataset_ids == (dataset.pk,)
    assert _validated_remembered.cache_info().currsize == 0


def test_the_viewport_answers_from_remembered_parameters_like_from_fresh_ones(client):
    path = "/api/v1/viewport/?bbox=-0.2,51.45,0.0,51.55&zoom=12&format=bin"
    first = client.get(path)
    second = client.get(path)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert _validated_remembered.cache_info().hits >= 1
    # a bad value is still a 400 naming it
    bad = client.get("/api/v1/viewport/?bbox=-0.2,51.45,0.0,51.55&zoom=x")
    assert bad.status_code == 400
    assert "zoom" in bad.json()
