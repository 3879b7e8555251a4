"""/api/v1/places/ page sizes: anonymous clients up to PLACES_API_ANON_MAX_PAGE_SIZE,
signed-in ones up to PLACES_API_MAX_PAGE_SIZE."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

LONDON = "-0.15,51.49,-0.07,51.53"


@pytest.fixture
def api(clear_cache) -> APIClient:
    return APIClient()


@pytest.fixture
def small_caps(settings) -> None:
    settings.PLACES_API_ANON_MAX_PAGE_SIZE = 20


def test_anonymous_page_above_the_anonymous_maximum_is_refused(api, gb_import, small_caps):
    # when an anonymous client asks for one feature more than its maximum
    response = api.get("/api/v1/places/", {"bbox": LONDON, "limit": 21})
    # then the answer is 400, naming the parameter and both maxima
    assert response.status_code == 400
    message = response.json()["limit"][0]
    assert "20" in message
    assert f"sign in for up to {settings.PLACES_API_MAX_PAGE_SIZE}" in message


def test_anonymous_page_at_the_anonymous_maximum_is_served(api, gb_import, small_caps):
    response = api.get("/api/v1/places/", {"bbox": LONDON, "limit": 20})
    assert response.status_code == 200
    assert len(response.json()["features"]) == 20
    # a page within the anonymous maximum never reads the session, so it stays shareable
    assert "Cookie" not in response.get("Vary", "")


def test_signed_in_client_gets_pages_up_to_the_full_maximum(api, gb_import, small_caps):
    # given a signed-in user (any account: the session is what counts)
    user = get_user_model().objects.create_user(username="reader", password="x")
    api.force_login(user)
    # when it asks for more than the anonymous maximum
    response = api.get("/api/v1/places/", {"bbox": LONDON, "limit": 50})
    # then it gets the page, and the answer varies by cookie
    assert response.status_code == 200
    assert len(response.json()["features"]) == 50
    assert "Cookie" in response["Vary"]
    # and above the full maximum it is refused too
    above = settings.PLACES_API_MAX_PAGE_SIZE + 1
    assert api.get("/api/v1/places/", {"bbox": LONDON, "limit": above}).status_code == 400
