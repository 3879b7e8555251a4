"""Query parameters validated once per process: the same answers, the same refusals, and
nothing remembered that the database could change."""

from __future__ import annotations

import pytest
from django.http import QueryDict
from django.test import RequestFactory
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework.exceptions import ValidationError

from places.models import Dataset
from places.services import dataset_get_or_create
from places.serving.params import (
    _BY_QUERY_STRING,
    PlaceFiltersQuery,
    PlaceListQuery,
    ViewportQuery,
    _validated,
    _validated_remembered,
    _viewport_plain,
    _viewport_plain_remembered,
    database_params,
    filters_validated,
    request_filters_validated,
)

pytestmark = pytest.mark.django_db


def _memos_clear() -> None:
    _validated_remembered.cache_clear()
    _viewport_plain_remembered.cache_clear()
    for remembered in _BY_QUERY_STRING.values():
        remembered.cache_clear()


@pytest.fixture(autouse=True)
def _forget():
    _memos_clear()
    yield
    _memos_clear()


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
    # (a filter besides the box: a box alone is validated without DRF or the memo)
    path = "/api/v1/viewport/?bbox=-0.2,51.45,0.0,51.55&zoom=12&format=bin&religion=christian"
    first = client.get(path)
    second = client.get(path)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    # the second found the first's parameters by its query string, before any parsing
    assert _BY_QUERY_STRING[ViewportQuery].cache_info().hits == 1
    assert _validated_remembered.cache_info().misses == 1
    # a bad value is still a 400 naming it
    bad = client.get("/api/v1/viewport/?bbox=-0.2,51.45,0.0,51.55&zoom=x")
    assert bad.status_code == 400
    assert "zoom" in bad.json()


def test_the_database_params_are_the_fields_that_look_things_up():
    assert database_params(PlaceFiltersQuery) == {"dataset", "country", "region"}
    assert database_params(ViewportQuery) == {"dataset", "country", "region"}


def test_repeated_and_undeclared_parameters_give_what_the_serializer_gives():
    # the last value of a repeated single-valued parameter wins, as in DRF; `v` (a tile
    # URL's data version) and junk are not part of the query
    text = "zoom=3&bbox=-0.2,51.45,0.0,51.55&zoom=12&v=abc&junk=1"
    direct = _serializer(ViewportQuery, text)
    ours = filters_validated(ViewportQuery, QueryDict(text))
    assert dict(ours.data) == dict(direct.validated_data)
    assert ours.data["zoom"] == 12
    # and another `v` finds the same entry
    filters_validated(ViewportQuery, QueryDict(text.replace("v=abc", "v=def")))
    assert _validated_remembered.cache_info().hits == 1


def test_query_classes_that_read_the_request_are_refused():
    with pytest.raises(TypeError):
        filters_validated(PlaceListQuery, QueryDict("limit=10"))


def test_fields_made_for_two_serializers_share_nothing_they_could_change():
    one, two = ViewportQuery().fields, ViewportQuery().fields
    for name in one:
        assert one[name] is not two[name]
        assert one[name].validators is not two[name].validators
        assert one[name].error_messages is not two[name].error_messages


def test_a_cached_tile_is_served_from_remembered_parameters(client):
    path = "/tiles/places/5/15/10.pbf?religion=christian&v=1"
    first = client.get(path)
    again = client.get(path.replace("v=1", "v=2"))
    assert first.status_code == again.status_code == 200
    assert _validated_remembered.cache_info().hits >= 1
    bad = client.get("/tiles/places/5/15/10.pbf?religion=nonsense")
    assert bad.status_code == 400
    assert "religion" in bad.json()


# Strings near the spellings a map sends, and the nasty ones around them.
_numbers = st.one_of(
    st.floats(min_value=-200, max_value=200).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400"]),
    st.integers(min_value=-200, max_value=200).map(str),
    st.sampled_from(["", " 1", "1 ", "1e1", "0x1", "١", "+5", "-0", "nan", "1_0", "\x00", "1.5.5"]),
)
_boxes = st.one_of(
    st.lists(_numbers, min_size=3, max_size=5).map(",".join),
    st.builds(
        lambda x, y, w, h: f"{x},{y},{x + w},{y + h}",
        st.floats(-180, 179),
        st.floats(-90, 89),
        st.floats(0, 1),
        st.floats(0, 1),
    ),
    st.sampled_from([" 0,0,1,1", "0,0,1,1 ", "0, 0, 1, 1", "170,-48,-175,-34", "0,0,1,1\n"]),
)
_zooms = st.one_of(
    st.integers(min_value=-2, max_value=40).map(str),
    st.sampled_from(["", " 7", "7 ", "7.0", "07", "٧", "²", "1e1", "+7", "0"]),
)
_formats = st.sampled_from([None, "bin", "json", "", "BIN", "xml", " bin"])


@st.composite
def _box_and_zoom(draw) -> tuple[str, str, bool]:
    """A box and a zoom, and whether both are in the plainest spelling: a box about as wide
    as a screen at its zoom (some too wide) written as Python writes floats, or any of the
    strings above."""
    if draw(st.booleans()):
        return draw(_boxes), draw(_zooms), False
    zoom = draw(st.one_of(st.integers(min_value=0, max_value=25), st.sampled_from([0, 21, 22, 23])))
    side = min(360.0, 16 * 360 / 2**zoom * draw(st.floats(0, 1.2)))
    x, y = draw(st.floats(-180, 180 - side)), draw(st.floats(-90, 90 - min(side, 180)))
    return f"{x!r},{y!r},{x + side!r},{min(y + side, 90.0)!r}", str(zoom), True


@settings(max_examples=500, deadline=None)
@given(box_zoom=_box_and_zoom(), fmt=_formats)
def test_the_plain_viewport_query_is_validated_as_drf_validates_it(box_zoom, fmt):
    box, zoom, plain_spelling = box_zoom
    items = [("bbox", (box,)), ("zoom", (zoom,))]
    if fmt is not None:
        items.append(("format", (fmt,)))
    items = tuple(sorted(items))
    plain = _viewport_plain(items)
    try:
        by_drf = _validated(ViewportQuery, items)
    except ValidationError:
        by_drf = None
    if plain is None:
        # DRF validates it (or refuses it) itself; a query in the plainest spelling that DRF
        # takes is one the plain path takes too
        assert not (plain_spelling and fmt in (None, "bin", "json") and by_drf is not None), items
        return
    # what the plain path accepts, DRF accepts, with the same values and the same query
    assert by_drf is not None, items
    assert dict(plain.data) == dict(by_drf.data)
    assert plain.filters == by_drf.filters
    assert plain.filters.key() == by_drf.filters.key()


def test_the_plain_path_takes_what_maps_send():
    # the map page's own requests: a box, a zoom and a format
    items = (("bbox", ("-0.2,51.45,0.0,51.55",)), ("format", ("bin",)), ("zoom", ("12",)))
    assert _viewport_plain(items) is not None
    assert _viewport_plain(items[:1] + items[2:]) is not None
    # without DRF, remembered apart from DRF's answers (a pan's boxes would push them out)
    query = QueryDict("bbox=-0.2,51.45,0.0,51.55&zoom=12&format=bin")
    first = filters_validated(ViewportQuery, query)
    assert filters_validated(ViewportQuery, query) is first
    assert _validated_remembered.cache_info().currsize == 0
    # anything else goes to DRF: another filter, a parameter given twice
    assert _viewport_plain((*items, ("religion", ("christian",)))) is None
    assert _viewport_plain((("bbox", ("0,0,1,1", "0,0,1,1")), ("zoom", ("5",)))) is None
    assert _viewport_plain((("bbox", ("-0.2,51.45,0.0,51.55",)), ("zoom", ("12.0",)))) is None


_VIEWPORT_QUERY_STRINGS = st.one_of(
    st.builds(
        lambda box, zoom, fmt, extra: "&".join(
            part for part in (f"bbox={box}", f"zoom={zoom}", fmt and f"format={fmt}", extra) if part
        ),
        _boxes,
        _zooms,
        _formats,
        st.sampled_from(
            [
                "",
                "religion=christian",
                "status=any",
                "v=3",
                "%76=3",
                "zoom=4",
                "q=%00",
                "q=café",
                "q=caf%C3%A9",
                "q=caf%E9",
                "q=a+b;c",
                "q=\x80",
            ]
        ),
    ),
    st.text(alphabet="bzoxfvq=&;,.%0123456789-+ éü\x80", max_size=40),
)


def _as_sent(text: str) -> str:
    """The query string as WSGI hands it over: the Latin-1 text of its UTF-8 bytes."""
    return text.encode("utf-8").decode("iso-8859-1")


@settings(max_examples=400, deadline=None)
@given(text=_VIEWPORT_QUERY_STRINGS, utf_8=st.booleans(), twice=st.booleans())
def test_a_query_string_remembered_gives_what_its_parameters_give(text, utf_8, twice):
    # sent as UTF-8 bytes, or as single bytes where it can be (Latin-1: not UTF-8 where é or
    # ü is in it)
    single_bytes = not utf_8 and all(ord(c) < 256 for c in text)
    query_string = text if single_bytes else _as_sent(text)

    def validated() -> object:
        # a request of its own each time, as each arrives
        request = RequestFactory().get("/api/v1/viewport/", QUERY_STRING=query_string)
        try:
            return request_filters_validated(ViewportQuery, request)
        except ValidationError as refused:
            return refused.detail

    # the request's own GET, parsed the ordinary way, as the reference
    reference = RequestFactory().get("/api/v1/viewport/", QUERY_STRING=query_string)
    try:
        expected: object = filters_validated(ViewportQuery, reference.GET)
    except ValidationError as refused:
        expected = refused.detail
    # then the first answer (remembered, if it may be) and the one after it are the same
    for _ in range(2 if twice else 1):
        assert validated() == expected, text


@pytest.mark.parametrize(
    "query_string",
    # the bytes of "café" in UTF-8, and in Latin-1 (not UTF-8: Django falls back to it)
    [
        _as_sent("bbox=-0.2,51.45,0.0,51.55&zoom=12&q=café"),
        "bbox=-0.2,51.45,0.0,51.55&zoom=12&q=caf\xe9",
    ],
)
def test_a_name_in_raw_bytes_is_read_as_django_reads_it(query_string):
    for _ in range(2):
        request = RequestFactory().get("/api/v1/viewport/", QUERY_STRING=query_string)
        assert request_filters_validated(ViewportQuery, request).filters.q == "café"
    assert _BY_QUERY_STRING[ViewportQuery].cache_info().hits == 1


def test_a_query_string_in_a_charset_of_its_own_is_decoded_in_it(rf):
    # "+AHo-oom" is "zoom" in UTF-7, which a request may name on its Content-Type
    query_string = "bbox=-0.2,51.45,0.0,51.55&zoom=3&%2BAHo-oom=12"
    plain = rf.get("/api/v1/viewport/", QUERY_STRING=query_string)
    utf7 = rf.get(
        "/api/v1/viewport/",
        QUERY_STRING=query_string,
        CONTENT_TYPE="text/plain; charset=utf-7",
    )
    assert request_filters_validated(ViewportQuery, plain).data["zoom"] == 3
    assert request_filters_validated(ViewportQuery, utf7).data["zoom"] == 12
    assert request_filters_validated(ViewportQuery, plain).data["zoom"] == 3


def test_a_view_naming_a_dataset_looks_it_up_each_time(client):
    path = "/api/v1/viewport/?bbox=-0.2,51.45,0.0,51.55&zoom=12&dataset=validated-view-later"
    # given: no such dataset yet, then made
    assert client.get(path).status_code == 400
    dataset = dataset_get_or_create(slug="validated-view-later")
    # then: the same query string finds it
    assert client.get(path).status_code == 200
    # and once it is renamed, the same query string no longer does
    Dataset.objects.filter(pk=dataset.pk).update(slug="validated-view-renamed")
    refused = client.get(path)
    assert refused.status_code == 400
    assert "dataset" in refused.json()
