"""Big pages of /api/v1/places/ are streamed: the same bytes as a page built whole, the same
ETag and 304, stored only when small, and a client that leaves mid-stream ends the page's
transaction.

The threshold and the chunk size are lowered here so that the GB sample's pages stream in
many chunks; the last test serves a real 30,000-feature page through gunicorn.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.gis.geos import Point
from django.core.cache import cache
from django.db import connection
from django_redis import get_redis_connection
from rest_framework.test import APIClient

from places.models import Place
from places.services import dataset_get_or_create, place_create, place_update
from places.serving import features
from tests.db import database_url

pytestmark = pytest.mark.django_db

LONDON = "-0.2,51.45,0.0,51.55"
GZIP = {"HTTP_ACCEPT_ENCODING": "gzip"}
APP_NAME = "places-stream-test"
# Enough to see a client leave: this long for gunicorn to start, or for its backend to go
# idle after the client went away (it does so at once on an idle machine).
WAIT_SECONDS = 60


@pytest.fixture
def api(clear_cache) -> APIClient:
    return APIClient()


def _stream(monkeypatch: pytest.MonkeyPatch, *, on: bool, chunk: int = 7) -> None:
    monkeypatch.setattr(features, "STREAM_ABOVE", 0 if on else 10**9)
    monkeypatch.setattr(features, "CHUNK_FEATURES", chunk)


def _body(response) -> bytes:
    raw = b"".join(response.streaming_content) if response.streaming else response.content
    return gzip.decompress(raw) if response.get("Content-Encoding") == "gzip" else raw


def _stored_bodies() -> int:
    redis = get_redis_connection("default")
    pattern = cache.make_key("bytes:*")
    return sum(1 for key in redis.scan_iter(match=pattern) if not key.endswith(b":building"))


HEADERS = ("X-Number-Matched", "X-Number-Matched-Exact", "X-Truncated", "Link", "ETag")


@pytest.mark.parametrize(
    "params",
    [
        {"bbox": LONDON, "limit": 1000},
        {"bbox": LONDON, "limit": 50, "religion": "christian", "fields": "name,country"},
        {"q": "saint", "limit": 1000, "status": "any"},
        {"bbox": LONDON, "denomination": "methodist", "limit": 1000, "format": "geojsonseq"},
        {"bbox": LONDON, "limit": 300, "format": "ndjson", "fields": "name,region"},
        {"bbox": LONDON, "limit": 300, "format": "csv"},
        # Over 10,000 matches: numberMatched is the planner's estimate, read in the snapshot.
        {"limit": 200, "status": "any", "format": "geojsonseq"},
        {"q": "no such place anywhere", "limit": 1000},
        {"q": "no such place anywhere", "limit": 1000, "format": "csv"},
    ],
    ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()),
)
@pytest.mark.parametrize("encoding", [GZIP, {}], ids=["gzip", "identity"])
def test_streamed_page_is_the_whole_page_byte_for_byte(
    api, gb_import, monkeypatch, params, encoding
):
    # given the page built whole
    _stream(monkeypatch, on=False)
    whole = api.get("/api/v1/places/", params, **encoding)
    cache.clear()
    # when the same page is streamed, seven features per statement
    _stream(monkeypatch, on=True)
    streamed = api.get("/api/v1/places/", params, **encoding)
    # then it was streamed, and its bytes and headers are the whole page's
    assert whole.status_code == streamed.status_code == 200
    assert not whole.streaming
    assert streamed.streaming
    assert _body(streamed) == _body(whole)
    for name in (*HEADERS, "Content-Type", "Content-Encoding", "Content-Disposition"):
        assert streamed.get(name) == whole.get(name), name


def test_streamed_text_keeps_every_character(api, gb_import, monkeypatch):
    # given a place whose name needs two, three and four bytes a character in UTF-8
    name = 'Église 教堂 ⛪ 🕌 "quoted"'
    dataset = dataset_get_or_create(slug="unicode")
    place = place_create(
        dataset=dataset, source_key="u1", data={"name": name, "location": Point(-0.1, 51.5)}
    )
    params = {"bbox": "-0.11,51.49,-0.09,51.51", "limit": 1000}
    _stream(monkeypatch, on=False)
    whole = api.get("/api/v1/places/", params)
    cache.clear()
    # when its page is streamed (the records handed over as the server's bytes)
    _stream(monkeypatch, on=True)
    streamed = api.get("/api/v1/places/", params)
    # then the name arrives as it was written, in the same bytes as the page built whole
    body = _body(streamed)
    assert body == _body(whole)
    found = {f["id"]: f for f in json.loads(body)["features"]}
    assert found[place.pk]["properties"]["name"] == name


def test_streamed_geojson_is_valid_and_complete(api, gb_import, monkeypatch):
    # given streaming in chunks of 7 features
    _stream(monkeypatch, on=True)
    # when a page of 500 of the 800-odd London places is asked for
    response = api.get("/api/v1/places/", {"bbox": LONDON, "limit": 500}, **GZIP)
    # then the body parses as one FeatureCollection whose figures match its features
    body = json.loads(_body(response))
    assert body["type"] == "FeatureCollection"
    ids = [f["id"] for f in body["features"]]
    assert body["numberReturned"] == len(ids) == 500
    assert ids == sorted(set(ids))
    assert body["truncated"] is True
    assert body["next"]
    assert response["Link"] == f'<{body["next"]}>; rel="next"'
    assert {(f["type"], f["geometry"]["type"]) for f in body["features"]} == {("Feature", "Point")}


def test_streamed_page_revalidates_with_its_etag(api, gb_import, monkeypatch, settings):
    # given a streamed page too big to be stored
    _stream(monkeypatch, on=True)
    settings.CACHE_MAX_BODY_BYTES = 1000
    params = {"bbox": LONDON, "limit": 500, "fields": "name"}
    first = api.get("/api/v1/places/", params, **GZIP)
    assert first.streaming
    etag = first["ETag"]
    first_body = json.loads(_body(first))
    assert _stored_bodies() == 0
    # when the client revalidates its copy
    again = api.get("/api/v1/places/", params, HTTP_IF_NONE_MATCH=etag, **GZIP)
    # then it is current: 304, nothing read, and the same validators
    assert again.status_code == 304
    assert not again.streaming
    assert again.content == b""
    assert again["ETag"] == etag
    # and after an edit of a place it shows, it gets the new page under a new ETag
    place = Place.objects.get(pk=first_body["features"][0]["id"])
    place_update(place=place, data={"name": "Streamed anew"})
    changed = api.get("/api/v1/places/", params, HTTP_IF_NONE_MATCH=etag, **GZIP)
    assert changed.status_code == 200
    assert changed["ETag"] != etag
    assert json.loads(_body(changed))["features"][0]["properties"]["name"] == "Streamed anew"


def test_small_streamed_page_is_stored_and_answered_from_the_cache(api, gb_import, monkeypatch):
    # given streaming on and the usual limit for stored bodies
    _stream(monkeypatch, on=True)
    params = {"bbox": LONDON, "limit": 40, "fields": "name"}
    # when a small page is streamed
    first = api.get("/api/v1/places/", params, **GZIP)
    body = _body(first)
    # then it is stored once read, and the next request is answered whole from the cache
    assert first.streaming
    assert _stored_bodies() == 1
    again = api.get("/api/v1/places/", params, **GZIP)
    assert not again.streaming
    assert _body(again) == body
    assert again["ETag"] == first["ETag"]
    assert again["X-Truncated"] == first["X-Truncated"] == "true"
    # and a client without gzip gets the same text
    plain = api.get("/api/v1/places/", params)
    assert plain.get("Content-Encoding") is None
    assert plain.content == body


def test_big_streamed_page_is_not_stored(api, gb_import, monkeypatch, settings):
    _stream(monkeypatch, on=True)
    settings.CACHE_MAX_BODY_BYTES = 1000
    for encoding in (GZIP, {}):
        response = api.get("/api/v1/places/", {"bbox": LONDON, "limit": 1000}, **encoding)
        assert len(_body(response)) > 100_000
    assert _stored_bodies() == 0


def test_stream_closed_unread_ends_its_snapshot(api, gb_import, monkeypatch):
    # given a streamed answer of which the client read only the first piece
    _stream(monkeypatch, on=True)
    depth = len(connection.savepoint_ids)
    response = api.get("/api/v1/places/", {"bbox": LONDON, "limit": 1000}, **GZIP)
    next(iter(response.streaming_content))
    assert len(connection.savepoint_ids) == depth + 1  # the page's snapshot is open
    # when the answer is closed (the client went away)
    response.close()
    # then the snapshot is ended
    assert len(connection.savepoint_ids) == depth


# A real server and a real client that goes away ------------------------------------------


def _app_backends() -> list[tuple[str, str | None]]:
    """State and transaction start of the served app's database sessions."""
    with connection.cursor() as cursor:
        # The test runs in a transaction, which would otherwise see the first reading again.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT state, xact_start::text FROM pg_stat_activity WHERE application_name = %s",
            [APP_NAME],
        )
        return cursor.fetchall()


@pytest.fixture
def gunicorn_port(gb_import, django_db_blocker) -> Iterator[int]:
    """gunicorn as deployed (config/gunicorn.py) on the test database; its sessions carry
    ``APP_NAME`` so that pg_stat_activity tells them apart."""
    with django_db_blocker.unblock():
        database = connection.settings_dict["NAME"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(dbname=database),
        "SECRET_KEY": secrets.token_urlsafe(40),
        "PLACES_API_ANON_MAX_PAGE_SIZE": str(settings.PLACES_API_MAX_PAGE_SIZE),
        "PGAPPNAME": APP_NAME,
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "python:config.gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--access-logfile",
            "/dev/null",
        ],
        cwd=Path(settings.BASE_DIR),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            assert process.poll() is None, "gunicorn exited"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health/live/")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not answer"
                time.sleep(0.2)
            finally:
                conn.close()
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.slow
def test_client_leaving_mid_stream_ends_the_transaction(gunicorn_port):
    # given a client with a small receive window asking for every GB place in one answer,
    # uncompressed (about 20 MB: far more than the sockets between them can hold)
    cache.clear()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    client.connect(("127.0.0.1", gunicorn_port))
    client.sendall(
        b"GET /api/v1/places/?limit=100000 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Accept-Encoding: identity\r\n\r\n"
    )
    head = client.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert b"chunked" in head.lower()
    # when it stops reading, the server is held mid-stream inside the page's transaction
    _wait_for(
        lambda: any(xact for _, xact in _app_backends()),
        "the server should be waiting to send, inside the page's transaction",
    )
    # and the client then goes away
    client.close()
    # then the server's session ends that transaction (nothing left open, no cursor held)
    _wait_for(
        lambda: not any(xact for _, xact in _app_backends()),
        "the page's transaction stayed open after the client left",
    )
    assert all(state == "idle" for state, _ in _app_backends())
