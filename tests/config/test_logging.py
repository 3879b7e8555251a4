"""Structured logs with a request id that the response echoes."""

from __future__ import annotations

import json
import logging

from config.logging import JsonFormatter, RequestIdFilter, request_id_var


def test_response_carries_the_request_id_sent(client):
    response = client.get("/health/live/", HTTP_X_REQUEST_ID="abc-123")
    assert response["X-Request-ID"] == "abc-123"


def test_unsafe_request_id_is_replaced(client):
    response = client.get("/health/live/", HTTP_X_REQUEST_ID="bad id\nforged log line")
    assert response["X-Request-ID"] != "bad id\nforged log line"
    assert len(response["X-Request-ID"]) == 32


def test_json_formatter_writes_one_object_with_request_id_and_extras():
    token = request_id_var.set("req-9")
    try:
        record = logging.makeLogRecord(
            {"name": "places", "levelname": "INFO", "msg": "imported %s", "args": (3,)}
        )
        record.import_job = 7
        RequestIdFilter().filter(record)
        line = JsonFormatter().format(record)
    finally:
        request_id_var.reset(token)
    payload = json.loads(line)
    assert payload["message"] == "imported 3"
    assert payload["request_id"] == "req-9"
    assert payload["import_job"] == 7
