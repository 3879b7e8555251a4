"""The stored-results API: summaries, comparisons, rankings and series as JSON and CSV, cached
per results version with ETags, and a 400 naming the parameter for every bad one."""

from __future__ import annotations

import csv
import io

import pytest

from analytics.models import RegionSummary
from analytics.services.results import results_bump
from analytics.services.sensors import sensor_rollups_recompute
from analytics.services.summaries import region_summaries_recompute
from ingestion.edge.models import Sensor
from places.models import Region

pytestmark = pytest.mark.django_db(databases=["default", "replica"])

STATS = "/api/v1/stats"


@pytest.fixture
def summaries(gb_import, clear_cache) -> None:
    region_summaries_recompute(full=True)


def _csv(response) -> list[dict[str, str]]:
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_summaries_of_a_level_as_json_and_csv(client, summaries):
    # when every district is asked for, in both formats
    body = client.get(f"{STATS}/summaries/", {"level": "district"}).json()
    rows = _csv(client.get(f"{STATS}/summaries/", {"level": "district", "format": "csv"}))
    # then both hold every stored district, with the same figures
    stored = RegionSummary.objects.filter(level="district")
    assert body["count"] == len(body["results"]) == len(rows) == stored.count()
    westminster = stored.get(code="E09000033")
    entry = next(r for r in body["results"] if r["region"]["code"] == "E09000033")
    row = next(r for r in rows if r["code"] == "E09000033")
    assert entry["places"] == westminster.places == int(row["places"])
    assert entry["by_religion"] == westminster.by_religion
    assert int(row["religion_christian"]) == westminster.by_religion["christian"]
    assert sum(entry["religion_shares"].values()) == pytest.approx(1, abs=1e-5)
    assert entry["quality"]["unnamed"]["rate"] == pytest.approx(
        westminster.unnamed / westminster.places, abs=1e-6
    )
    assert float(row["per_1000_km2"]) == pytest.approx(westminster.per_1000_km2)
    assert entry["computed"]["on"] == westminster.computed_on


def test_one_region_and_a_comparison(client, summaries):
    # given two districts and an id without a summary
    a, b = (Region.objects.get(code=c) for c in ("E09000033", "E09000007"))
    # when
    one = client.get(f"{STATS}/summaries/{a.pk}/").json()
    compared = client.get(f"{STATS}/compare/", {"regions": f"{b.pk},{a.pk},999999"}).json()
    compared_csv = _csv(
        client.get(f"{STATS}/compare/", {"regions": f"{b.pk},{a.pk}", "format": "csv"})
    )
    # then
    assert one["region"] == {"id": a.pk, "code": a.code, "name": a.name, "level": "district"}
    assert [r["region"]["id"] for r in compared["results"]] == [b.pk, a.pk]
    assert compared["missing"] == [999999]
    assert [r["code"] for r in compared_csv] == [b.code, a.code]
    assert client.get(f"{STATS}/summaries/999999/").status_code == 404


def test_rankings_per_100k_people_of_one_religion(client, summaries):
    # when countries are ranked by Christian places per 100,000 people
    body = client.get(
        f"{STATS}/rankings/",
        {"level": "country", "order": "per_100k_people", "religion": "christian", "limit": 5},
    ).json()
    # then the value is that religion's count over the stored population, highest first
    gbr = next(r for r in body["results"] if r["region"]["code"] == "GBR")
    stored = RegionSummary.objects.get(code="GBR", level="country")
    assert gbr["value"] == pytest.approx(
        stored.by_religion["christian"] / stored.population * 100_000
    )
    values = [r["value"] for r in body["results"]]
    assert values == sorted(values, reverse=True)
    assert [r["rank"] for r in body["results"]] == list(range(1, len(values) + 1))
    # and the CSV has the same order
    rows = _csv(
        client.get(
            f"{STATS}/rankings/",
            {
                "level": "country",
                "order": "per_100k_people",
                "religion": "christian",
                "limit": 5,
                "format": "csv",
            },
        )
    )
    assert [r["code"] for r in rows] == [r["region"]["code"] for r in body["results"]]


def test_answers_are_cached_per_results_version_with_etags(
    client, summaries, django_assert_num_queries
):
    # given an answer
    url = f"{STATS}/summaries/"
    first = client.get(url, {"level": "district"})
    etag = first["ETag"]
    assert first["Cache-Control"] == "no-cache"
    # when it is asked again: one query (the results version), same body; 304 by ETag
    with django_assert_num_queries(1):
        again = client.get(url, {"level": "district"})
    assert again.content == first.content
    assert client.get(url, {"level": "district"}, HTTP_IF_NONE_MATCH=etag).status_code == 304
    # and CSV is another entry
    assert client.get(url, {"level": "district", "format": "csv"})["ETag"] != etag
    # when the stored results change
    results_bump()
    # then the old ETag no longer matches
    assert client.get(url, {"level": "district"}, HTTP_IF_NONE_MATCH=etag).status_code == 200


def test_region_and_sensor_series(client, sensors, clear_cache):
    # given rollups of the two Westminster sensors
    region_summaries_recompute(full=True)
    sensor_rollups_recompute(full=True)
    westminster = sensors["westminster"]
    # when the region's days and one sensor's hours are asked for
    day = client.get(f"{STATS}/summaries/{westminster.pk}/series/", {"interval": "day"}).json()
    hours = client.get(f"{STATS}/sensors/{_sensor_id('aq-1')}/series/", {"interval": "hour"})
    decades = client.get(f"{STATS}/summaries/{westminster.pk}/series/", {"interval": "decade"})
    # then
    assert day["parameter"] == "pm2_5"
    assert day["points"][0]["t"] == "2026-03-02T00:00:00Z"
    assert day["points"][0]["sensors"] == 2
    points = hours.json()["points"]
    assert len(points) == 24
    nine = next(p for p in points if p["t"] == "2026-03-02T09:00:00Z")
    assert (nine["count"], nine["coverage"]) == (3, 0.5)
    assert decades.json()["interval"] == "decade"
    # and since/until bound the series, in CSV too
    rows = _csv(
        client.get(
            f"{STATS}/sensors/{_sensor_id('aq-1')}/series/",
            {
                "interval": "hour",
                "since": "2026-03-02T09:00:00Z",
                "until": "2026-03-02T11:00:00Z",
                "format": "csv",
            },
        )
    )
    assert [r["t"] for r in rows] == ["2026-03-02T09:00:00Z", "2026-03-02T10:00:00Z"]


def _sensor_id(external_id: str) -> int:
    return Sensor.objects.get(external_id=external_id).pk


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("summaries/", {"level": "galaxy"}, "level"),
        ("summaries/", {"format": "xml"}, "format"),
        ("summaries/", {"level": ""}, "level"),
        ("compare/", {}, "regions"),
        ("compare/", {"regions": "1,x"}, "regions"),
        ("compare/", {"regions": ",".join(str(i) for i in range(1, 60))}, "regions"),
        ("rankings/", {"order": "loudest"}, "order"),
        ("rankings/", {"order": "shannon", "religion": "sikh"}, "religion"),
        ("rankings/", {"religion": "pastafarian"}, "religion"),
        ("rankings/", {"limit": "0"}, "limit"),
        ("rankings/", {"direction": "up"}, "direction"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(client, clear_cache, path, params, field):
    response = client.get(f"{STATS}/{path}", params)
    assert response.status_code == 400
    assert field in response.json()


def test_bad_series_parameters_are_400_naming_the_field(client, sample_regions, clear_cache):
    region = Region.objects.get(code="E09000033").pk
    url = f"{STATS}/summaries/{region}/series/"
    for params, field in [
        ({"interval": "week"}, "interval"),
        ({"parameter": "unobtainium"}, "parameter"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "until"),
    ]:
        response = client.get(url, params)
        assert response.status_code == 400, params
        assert field in response.json(), params
