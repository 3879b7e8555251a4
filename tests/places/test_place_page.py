"""The public place page (/places/<id>/), rendered on the server, and the offline basemap's
build."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.gis.geos import Point

from places.models import PlaceStatus
from places.services import dataset_get_or_create, place_create, place_update

pytestmark = pytest.mark.django_db

ROOT = Path(settings.BASE_DIR)


@pytest.fixture
def dataset():
    return dataset_get_or_create(
        slug="page-test",
        defaults={
            "name": "Page test places",
            "licence": "ODbL 1.0",
            "attribution": "© OpenStreetMap contributors",
            "source_url": "https://example.org/source",
        },
    )


def _place(dataset, key, name, lon, lat, **data):
    return place_create(
        dataset=dataset,
        source_key=key,
        data={
            "name": name,
            "religion": "christian",
            "location": Point(lon, lat, srid=4326),
            **data,
        },
    )


@pytest.fixture
def abbey(dataset):
    # Far from every sample place, so that its neighbours are the ones made here.
    abbey = _place(dataset, "k:abbey", "Test Abbey", 150.001, -80.001, denominations=["anglican"])
    _place(dataset, "k:near", "Near Chapel", 150.002, -80.001)
    _place(dataset, "k:far", "Far Mosque", 150.1, -80.001, religion="muslim")
    return abbey


def test_the_page_shows_facts_source_licence_and_nearby_places(client, abbey):
    # when
    response = client.get(f"/places/{abbey.pk}/")
    # then
    assert response.status_code == 200
    html = response.content.decode()
    assert "<h1>Test Abbey</h1>" in html
    assert "<dd>Christian</dd>" in html
    assert "Anglican" in html
    assert "-80.00100, 150.00100" in html
    assert (
        '<a href="https://example.org/source" rel="external nofollow">Page test places</a>' in html
    )
    assert "<dd>ODbL 1.0</dd>" in html
    assert "© OpenStreetMap contributors" in html
    assert f'href="/api/v1/places/{abbey.pk}/"' in html
    assert f'<link rel="canonical" href="http://testserver/places/{abbey.pk}/">' in html
    # nearest first, with distances
    near = html.index("Near Chapel")
    far = html.index("Far Mosque")
    assert near < far
    assert "Near Chapel</a>, Christian: 19 m" in html
    assert "Far Mosque</a>, Muslim: 1.9 km" in html
    # the small map is drawn from our own files
    assert 'id="place-map"' in html
    assert "places/place.js" in html


def test_the_change_history_shows_what_changed_but_not_who(client, abbey):
    # given: a curator renames the place
    curator = get_user_model().objects.create_user("secret-curator", password="x")
    place_update(place=abbey, data={"name": "Test Abbey Church"}, user=curator, comment="typo")
    # when
    html = client.get(f"/places/{abbey.pk}/").content.decode()
    # then: newest first, values of public fields, no user
    assert html.index("name: Test Abbey → Test Abbey Church") < html.index("Create (version 1)")
    assert "Update (version 2)" in html
    assert "location: — → -80.00100, 150.00100" in html
    assert "secret-curator" not in html


def test_a_merged_place_redirects_to_its_successor(client, dataset, abbey):
    # given
    twin = _place(dataset, "k:twin", "Test Abbey (twin)", 150.001, -80.001)
    place_update(
        place=twin,
        data={"status": PlaceStatus.MERGED, "merged_into": abbey},
        operation="merge",
    )
    # when
    response = client.get(f"/places/{twin.pk}/")
    # then
    assert response.status_code == 301
    assert response["Location"] == f"/places/{abbey.pk}/"


def test_a_retired_place_still_has_its_page(client, abbey):
    place_update(place=abbey, data={"status": PlaceStatus.RETIRED})
    response = client.get(f"/places/{abbey.pk}/")
    assert response.status_code == 200
    assert "<dd>Retired</dd>" in response.content.decode()


def test_an_unknown_place_is_404(client):
    assert client.get("/places/999999999/").status_code == 404


def test_the_map_page_offers_the_filters_and_the_config(client, abbey, clear_cache):
    # given a dataset without places (regions alone, say)
    dataset_get_or_create(slug="page-empty")
    # when
    html = client.get("/map/").content.decode()
    # then
    # one box per dataset that holds places, ticked, with its licence and attribution
    assert (
        '<input type="checkbox" id="dataset-page-test" name="dataset" value="page-test" '
        'checked aria-describedby="dataset-page-test-source">' in html
    )
    assert '<label for="dataset-page-test">Page test places</label>' in html
    assert (
        '<p id="dataset-page-test-source" class="hint">ODbL 1.0 · © OpenStreetMap contributors</p>'
        in html
    )
    assert 'value="page-empty"' not in html
    assert '<option value="anglican">' in html
    assert '<option value="any">' in html
    assert 'id="map-config"' in html
    assert "ne_50m_land.geojson" in html
    assert "ne_50m_water.geojson" in html


def _digests(folder: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.glob("ne_50m_*.geojson"))
    }


@pytest.mark.slow
def test_the_committed_basemap_is_what_bin_build_basemap_makes(tmp_path):
    # given: a copy of the tree's inputs and builder, writing into the copy
    copy = tmp_path / "main"
    for part in ("bin/build-basemap", "config", "ingestion/sample_data"):
        source = ROOT / part
        target = copy / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("air_quality"))
        else:
            shutil.copy2(source, target)
    # Nothing beside the copy: the inputs are all in the checkout (no ../shared for users).
    (copy / "static" / "places" / "basemap").mkdir(parents=True)
    # when
    subprocess.run([sys.executable, str(copy / "bin" / "build-basemap")], check=True)
    # then
    built = _digests(copy / "static" / "places" / "basemap")
    assert built == _digests(ROOT / "static" / "places" / "basemap")
    assert set(built) == {
        "ne_50m_land.geojson",
        "ne_50m_borders.geojson",
        "ne_50m_places.geojson",
        "ne_50m_water.geojson",
    }
