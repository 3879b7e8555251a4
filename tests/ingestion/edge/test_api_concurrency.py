"""The observations endpoint under concurrent requests, committed for real (each thread has
its own connection, so the node and key must be visible to it). Rows are left behind."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client

from ingestion.edge.models import EdgeNode, Observation, ObservationBatch
from ingestion.edge.services.keys import edge_key_create, edge_key_revoke
from places.throttling import KEY_PREFIX
from tests.ingestion.edge.factories import node_make

OBSERVATIONS = "/api/v1/edge/observations/"


@pytest.fixture
def committed(django_db_setup, django_db_blocker, settings) -> Iterator[None]:
    settings.EDGE_RATE = None
    with django_db_blocker.unblock():
        yield
        connection.close()


def _body(readings: int) -> bytes:
    """A batch of a new sensor (sensor ids are global and these rows stay behind)."""
    sensor = f"conc-{uuid.uuid4().hex[:12]}"
    start = dt.datetime(2019, 3, 1, 7, tzinfo=dt.UTC)
    batch = {
        "sensors": [{"id": sensor, "kind": "SDS011"}],
        "readings": [
            {
                "sensor": sensor,
                "parameter": "pm10",
                "time": (start + dt.timedelta(minutes=m)).isoformat(),
                "value": 10 + m,
            }
            for m in range(readings)
        ],
    }
    return json.dumps(batch).encode()


def _post(key: str, body: bytes, idempotency_key: str):
    return Client().post(
        OBSERVATIONS,
        data=body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        HTTP_IDEMPOTENCY_KEY=idempotency_key,
    )


def _stored(node: EdgeNode) -> tuple[int, int]:
    return (
        ObservationBatch.objects.filter(node=node).count(),
        Observation.objects.filter(sensor__node=node).count(),
    )


@pytest.mark.slow
def test_the_same_batch_sent_twice_at_once_is_stored_once_and_both_get_its_answer(committed):
    # given a node, and two clients that send the same batch under the same key at once
    node = node_make()
    key = edge_key_create(node=node).secret
    body = _body(50)
    barrier = threading.Barrier(2)
    answers: list[Any] = []

    def send() -> None:
        barrier.wait()
        try:
            answers.append(_post(key, body, "together"))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then both get 200 with one answer, one of them marked as the replay
    assert sorted(a.status_code for a in answers) == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert sorted(a.get("Idempotent-Replayed", "") for a in answers) == ["", "true"]
    assert _stored(node) == (1, 50)


@pytest.mark.django_db  # needs no commit (and makes this module set up the test database)
def test_a_revoked_key_cannot_fetch_a_stored_answer(settings):
    settings.EDGE_RATE = None
    cache.delete_pattern(f"{KEY_PREFIX}:*")  # type: ignore[attr-defined]  # django-redis
    node = node_make()
    created = edge_key_create(node=node)
    body = _body(3)
    assert _post(created.secret, body, "k").status_code == 200
    edge_key_revoke(key=created.key)
    response = _post(created.secret, body, "k")
    assert (response.status_code, response.json()["code"]) == (401, "key_revoked")
