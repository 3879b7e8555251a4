import pytest
from django.contrib.staticfiles import finders


@pytest.mark.django_db  # the map page lists the datasets and denominations for its filters
def test_favicon_ico_redirects_to_the_icon_pages_link(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 302
    assert response["Location"].endswith("places/favicon.svg")
    assert finders.find("places/favicon.svg")
    page = client.get("/map/").content.decode()
    assert 'rel="icon" href="/static/places/favicon.svg"' in page
