"""The Celery application. Configuration lives in Django settings under ``CELERY_*``."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("places")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect(weak=False)
def _worker_metrics(**_: object) -> None:
    # In the worker's main process, before the pool forks (places.metrics).
    from places.metrics import worker_metrics_init

    worker_metrics_init()
