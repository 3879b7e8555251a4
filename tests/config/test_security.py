"""Security headers on every response, and pages that run under the Content-Security-Policy."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from django.urls import reverse

from places.models import Place, Region

SCRIPT = re.compile(r"<script(?P<attrs>[^>]*)>(?P<body>.*?)</script>", re.S)
STYLE = re.compile(r"<style[^>]*>(?P<body>.*?)</style>", re.S)
NONCE = re.compile(r"""nonce=["']?(?P<nonce>[^"'\s>]+)""")


def _directives(response) -> dict[str, list[str]]:
    header = response.headers["Content-Security-Policy"]
    parts = (part.split() for part in header.split(";") if part.strip())
    return {name: values for name, *values in parts}


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def assert_runs_under_the_policy(response) -> None:
    """Every inline script carries the header's nonce and every <style> block has its hash."""
    html = response.content.decode()
    policy = _directives(response)
    for script in SCRIPT.finditer(html):
        attrs = script["attrs"]
        if "src=" in attrs or 'type="application/json"' in attrs or not script["body"].strip():
            continue
        nonce = NONCE.search(attrs)
        assert nonce, f"inline script without a nonce: {script['body'][:80]!r}"
        assert f"'nonce-{nonce['nonce']}'" in policy["script-src"]
    for style in STYLE.finditer(html):
        assert _sha256(style["body"]) in policy["style-src"], style["body"][:80]
    assert not re.search(r"""\son[a-z]+=["']""", html), "inline event handler"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/map/", "/api/v1/datasets/", "/health/live/"])
def test_every_response_carries_the_security_headers(client, path):
    response = client.get(path)
    assert response.status_code == 200
    policy = _directives(response)
    assert policy["script-src"] == ["'self'"]  # no nonce where no page script needs one
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in policy["style-src"]
    assert "'unsafe-eval'" not in response.headers["Content-Security-Policy"]
    assert "camera=()" in response.headers["Permissions-Policy"]
    assert "geolocation=()" in response.headers["Permissions-Policy"]
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/map/", "/api/docs/"])
def test_public_pages_run_under_the_policy(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert_runs_under_the_policy(response)


@pytest.mark.django_db
def test_api_docs_load_their_start_up_script_as_a_file(client):
    # given the Swagger UI page, which may not run inline scripts
    page = client.get("/api/docs/").content.decode()
    script_url = re.search(r'<script src="(?P<url>/api/docs/\?[^"]*script[^"]*)"', page)
    assert script_url, "the start-up script is not loaded from a URL"
    # when the browser fetches it
    script = client.get(script_url["url"].replace("&amp;", "&"))
    # then it is JavaScript that loads our schema
    assert script.status_code == 200
    assert script.headers["Content-Type"].startswith("application/javascript")
    assert b"/api/schema/" in script.content


def test_admin_pages_run_under_the_policy(admin_client, gb_import):
    place = Place.objects.filter(dataset=gb_import.dataset).first()
    region = Region.objects.first()
    pages = [
        reverse("admin:index"),
        reverse("admin:places_place_changelist"),
        reverse("admin:places_place_change", args=[place.pk]),
        reverse("admin:places_place_add"),
        reverse("admin:places_region_change", args=[region.pk]),
        reverse("admin:ingestion_importjob_changelist"),
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
        assert_runs_under_the_policy(response)


def test_admin_map_runs_with_a_fresh_nonce_per_response(admin_client, gb_import):
    # given a change page with map widgets, opened twice
    place = Place.objects.filter(dataset=gb_import.dataset).first()
    url = reverse("admin:places_place_change", args=[place.pk])
    first, second = admin_client.get(url), admin_client.get(url)
    # then the map's script carries the header's nonce, a new one each time
    nonces = []
    for response in (first, second):
        html = response.content.decode()
        scripts = [s for s in SCRIPT.finditer(html) if "new MapWidget" in s["body"]]
        assert scripts
        nonce = NONCE.search(scripts[0]["attrs"])["nonce"]
        assert _directives(response)["script-src"] == ["'self'", f"'nonce-{nonce}'"]
        nonces.append(nonce)
    assert nonces[0] != nonces[1]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/", "/map/", "/health/live/", "/api/v1/datasets/", "/tiles/regions.json", "/admin/"]
)
def test_trace_is_refused_everywhere(client, path):
    response = client.generic("TRACE", path)
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    assert "TRACE" not in response.headers["Allow"]


@pytest.mark.django_db
def test_a_method_an_api_view_lacks_gets_405_not_403(client):
    # given an anonymous client, which the API's permissions would refuse any write
    # when it posts to a read-only list
    response = client.post("/api/v1/datasets/", {})
    # then the answer says the method is wrong, and which ones work
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
