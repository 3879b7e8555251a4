"""A real S3 API for tests: moto's S3 server on a free local port, a fresh bucket made the
default storage through the settings' UPLOADS_S3_* variables, and the system's temporary
directory moved to a folder of the test's own, to see what is left in it.

A plugin of the root conftest (``pytest_plugins``); moto and boto3 are imported only by a test
that asks for a bucket.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from config.settings.base import uploads_storage


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, settings, monkeypatch, tmp_path) -> tuple[Any, str]:
    """A fresh bucket as the default storage, configured through the settings' variables."""
    import boto3

    name = f"places-uploads-{uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="places-test",
        aws_secret_access_key="places-test-secret",  # nosec B106 # moto accepts any
    )
    client.create_bucket(Bucket=name)
    secret_file = tmp_path / "s3-secret"
    secret_file.write_text("places-test-secret\n")
    for variable, value in {
        "UPLOADS_S3_BUCKET": name,
        "UPLOADS_S3_ENDPOINT_URL": s3_endpoint,
        "UPLOADS_S3_REGION": "us-east-1",
        "UPLOADS_S3_ACCESS_KEY_ID": "places-test",
        # As the Helm chart passes it: a mounted secret file.
        "UPLOADS_S3_SECRET_ACCESS_KEY_FILE": str(secret_file),
        "UPLOADS_S3_PREFIX": "media",
    }.items():
        monkeypatch.setenv(variable, value)
    settings.STORAGES = {**settings.STORAGES, "default": uploads_storage()}
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return client, name


@pytest.fixture
def temp_dir(tmp_path, monkeypatch) -> Path:
    """The system's temporary directory for the test, to see what is left in it."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
