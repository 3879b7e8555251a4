"""The Helm chart (k8s/chart) renders, for each environment, what k8s/README.md promises: one
beat, liveness probes that never reach the database, migrations as a hook before the release,
resources from the measured figures, workers per queue scaled on their queue's length,
default-deny network policies, secrets as files, pinned images, valid custom resources.

helm comes from bin/deploy-tools (``make check-deploy`` fetches it before the tests; the
fixture fetches it when missing). Rendering is offline: no cluster is involved."""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from django.conf import settings

from places import metrics

ROOT = Path(settings.BASE_DIR)
CHART = ROOT / "k8s" / "chart"
ENVIRONMENTS = ["development", "staging", "production"]
MIB = 1024 * 1024
UNITS = {"Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB, "k": 1000, "M": 1000**2, "G": 1000**3}
# Measured (README "Benchmarks" and "Imports"): a gunicorn or Celery process after start, a
# gunicorn worker's worst peak (before big answers streamed), an import's peak (428 MB).
PROCESS_BASE_MIB = 158
GUNICORN_WORST_PEAK_MIB = 659
GUNICORN_PEAK_MIB = 239
IMPORT_PEAK_MIB = 408


@functools.cache
def _helm() -> str:
    helm = subprocess.run(
        [str(ROOT / "bin" / "deploy-tools"), "--helm"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not Path(ROOT / helm).exists():
        subprocess.run([str(ROOT / "bin" / "deploy-tools")], check=True, capture_output=True)
    return str(ROOT / helm)


def render(environment: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _helm(),
            *("template", "places", str(CHART), "--namespace", "places"),
            *("-f", str(CHART / "environments" / f"{environment}.yaml"), *args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module", params=ENVIRONMENTS)
def objects(request) -> list[dict]:
    result = render(request.param)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _of_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod_specs(objects: list[dict]) -> dict[str, dict]:
    workloads = ("Deployment", "StatefulSet", "Job")
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in workloads
    }


def _mib(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * UNITS.get(unit, 1) / MIB


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_exactly_one_beat_which_never_overlaps_itself(objects):
    # given each environment's manifests
    deployments = _of_kind(objects, "Deployment")
    # when the beat Deployments are picked out by the command they run
    beats = [
        d
        for d in deployments.values()
        if "beat" in d["spec"]["template"]["spec"]["containers"][0].get("command", [])
    ]
    # then there is one, of one replica, replaced by stopping it first, and no autoscaler
    assert len(beats) == 1
    assert beats[0]["spec"]["replicas"] == 1
    assert beats[0]["spec"]["strategy"]["type"] == "Recreate"
    targets = {
        h["spec"]["scaleTargetRef"]["name"]
        for h in _of_kind(objects, "HorizontalPodAutoscaler").values()
    }
    assert beats[0]["metadata"]["name"] not in targets


@pytest.mark.django_db
def test_web_liveness_asks_nothing_of_the_database(objects, client, django_assert_num_queries):
    # given the web container's liveness and startup probes
    web = _of_kind(objects, "Deployment")["places-web"]["spec"]["template"]["spec"]["containers"][0]
    paths = {web[p]["httpGet"]["path"] for p in ("livenessProbe", "startupProbe")}
    assert len(paths) == 1
    # when the path they probe is requested
    with django_assert_num_queries(0):
        response = client.get(paths.pop())
    # then it answers without a single query, while readiness is the check that does look
    assert response.status_code == 200
    assert web["readinessProbe"]["httpGet"]["path"] == "/health/ready/"


def test_migrations_are_a_hook_job_before_install_and_upgrade(objects):
    # given the Job that runs manage.py migrate
    jobs = _of_kind(objects, "Job")
    job = jobs["places-migrate"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-2:] == ["migrate", "--noinput"]
    # then it is a hook before install and upgrade, and it does not lean on release objects
    # (a ConfigMap is created after hooks), so it carries its settings inline
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "envFrom" not in container
    assert _env(container)["DJANGO_SETTINGS_MODULE"]["value"] == "config.settings.production"
    # and its network policy is a hook placed before it
    policy = _of_kind(objects, "NetworkPolicy")["places-migrate"]["metadata"]["annotations"]
    assert int(policy["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])


def test_resources_cover_the_measured_memory(objects):
    # given the web and ingestion containers and the web's gunicorn workers
    deployments = _of_kind(objects, "Deployment")
    web_pod = deployments["places-web"]["spec"]["template"]["spec"]["containers"][0]
    workers = int(_env(web_pod)["WEB_CONCURRENCY"]["value"])
    web = web_pod["resources"]
    ingestion = deployments["places-worker-ingestion"]["spec"]["template"]["spec"]["containers"][0]
    # then the web's request holds its workers at their usual peak, its limit at their worst
    # (the 1 Gi of the old manifests was below two workers' 597 MiB each)
    assert _mib(web["requests"]["memory"]) >= PROCESS_BASE_MIB + workers * GUNICORN_PEAK_MIB
    assert _mib(web["limits"]["memory"]) >= PROCESS_BASE_MIB + workers * GUNICORN_WORST_PEAK_MIB
    # and an ingestion worker's request holds one import at its peak beside the main process
    concurrency = int(ingestion["command"][ingestion["command"].index("--concurrency") + 1])
    expected = PROCESS_BASE_MIB + concurrency * IMPORT_PEAK_MIB
    assert _mib(ingestion["resources"]["requests"]["memory"]) >= expected
    # and every container has requests and a memory limit
    for name, pod in _pod_specs(objects).items():
        for container in pod["containers"]:
            assert {"requests", "limits"} <= set(container["resources"]), name
            assert "memory" in container["resources"]["limits"], name


def test_a_worker_per_queue_with_probes_of_its_own_scaled_on_its_queue(objects):
    # given the worker Deployments
    deployments = _of_kind(objects, "Deployment")
    workers = {
        n.removeprefix("places-worker-"): d for n, d in deployments.items() if "-worker-" in n
    }
    # then there is one per queue the tasks are routed to, consuming that queue only
    assert set(workers) == set(metrics.celery_queues())
    hpas = _of_kind(objects, "HorizontalPodAutoscaler")
    for queue, deployment in workers.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][container["command"].index("-Q") + 1] == queue
        # alive: its metrics port answers (no broker, no database); ready: it answers a ping
        assert container["livenessProbe"]["httpGet"]["port"] == "metrics"
        assert f'-d "{queue}@$HOSTNAME"' in container["readinessProbe"]["exec"]["command"][-1]
        # scaled on its own queue's length, where autoscaling is on
        hpa = hpas.get(f"places-worker-{queue}")
        if hpa is not None:
            (metric,) = hpa["spec"]["metrics"]
            assert metric["external"]["metric"]["name"] == "places_celery_queue_length"
            assert metric["external"]["metric"]["selector"]["matchLabels"] == {"queue": queue}


def test_production_web_scales_on_cpu_and_request_rate():
    # given production's manifests
    result = render("production")
    hpa = _of_kind(list(yaml.safe_load_all(result.stdout)), "HorizontalPodAutoscaler")["places-web"]
    # then the web's autoscaler follows CPU and requests per second per pod
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert kinds["Pods"]["pods"]["metric"]["name"] == "places_http_requests_per_second"
    # and the adapter rule that serves it exists beside the chart
    adapter = (ROOT / "k8s" / "prometheus-adapter.yaml").read_text()
    assert "places_http_requests_per_second" in adapter
    assert "places_celery_queue_length" in adapter


def test_network_policies_deny_by_default_and_open_only_the_paths_needed(objects):
    policies = _of_kind(objects, "NetworkPolicy")
    # given a default deny on every pod of the namespace, both ways
    deny = policies["places-default-deny"]["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny
    assert "egress" not in deny
    # then web is reached from the Ingress controller's and Prometheus's namespaces only
    web = policies["places-web"]["spec"]
    sources = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in web["ingress"]
        for peer in rule["from"]
    }
    assert sources == {"ingress-nginx", "monitoring"}
    # and workers take in nothing but Prometheus on their metrics port
    workers = policies["places-workers"]["spec"]
    assert [p["port"] for r in workers["ingress"] for p in r["ports"]] == [9808]
    # and send only to the database and Redis (and HTTPS to listed CIDRs, none but production)
    ports = {p["port"] for rule in workers["egress"] for p in rule["ports"]}
    assert ports <= {5432, 6379, 443}
    for rule in workers["egress"]:
        if any(p["port"] == 443 for p in rule["ports"]):
            assert all("ipBlock" in peer for peer in rule["to"])
    # and beat reaches Redis only
    beat = policies["places-beat"]["spec"]
    assert {p["port"] for r in beat["egress"] for p in r["ports"]} <= {6379, 443}


def test_secrets_are_mounted_files_never_environment_values(objects):
    for name, pod in _pod_specs(objects).items():
        # given every app container
        for container in pod["containers"]:
            env = _env(container)
            # then no variable takes its value from a Secret
            assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in env.values()), name
            # and the database URLs name no password (it is the mounted DATABASE_PASSWORD_FILE)
            for key in ("DATABASE_URL", "REPLICA_DATABASE_URL"):
                if key in env:
                    assert re.match(r"postgis://[^:@]+@", env[key]["value"]), name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            for key, var in env.items():
                if key.endswith("_FILE"):
                    assert str(Path(var["value"]).parent) in mounts, (name, key)
        # and no pod gets a service-account token or runs as root
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name


def test_uploads_in_a_bucket_need_no_shared_volume():
    # given the default: uploads on a ReadWriteMany volume that web and the workers mount
    default = [d for d in yaml.safe_load_all(render("production").stdout) if d]
    claim = _of_kind(default, "PersistentVolumeClaim")["places-media"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    # when a bucket is named
    result = render(
        "production",
        *("--set", "uploads.s3.bucket=places-uploads"),
        *("--set", "uploads.s3.endpointURL=http://minio.storage:9000"),
        *("--set", "uploads.s3.port=9000"),
    )
    assert result.returncode == 0, result.stderr
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    # then no volume is claimed for media and no pod mounts one
    assert "places-media" not in _of_kind(objects, "PersistentVolumeClaim")
    for name, pod in _pod_specs(objects).items():
        assert "media" not in {v["name"] for v in pod.get("volumes", [])}, name
    # and the app reads the bucket from its ConfigMap, the credentials from mounted files
    config = _of_kind(objects, "ConfigMap")["places-config"]["data"]
    assert config["UPLOADS_S3_BUCKET"] == "places-uploads"
    assert config["UPLOADS_S3_ENDPOINT_URL"] == "http://minio.storage:9000"
    for name in ("places-web", "places-worker-ingestion"):
        env = _env(
            _of_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
        )
        assert env["UPLOADS_S3_SECRET_ACCESS_KEY_FILE"]["value"] == (
            "/run/secrets/places/UPLOADS_S3_SECRET_ACCESS_KEY"
        )
        assert "UPLOADS_S3_ACCESS_KEY_ID_FILE" in env
    # and web and the workers may reach the store on its port, beat may not
    policies = _of_kind(objects, "NetworkPolicy")
    for policy, allowed in (("places-web", True), ("places-workers", True), ("places-beat", False)):
        ports = {p["port"] for r in policies[policy]["spec"]["egress"] for p in r["ports"]}
        assert (9000 in ports) is allowed, policy


def test_images_are_pinned_and_latest_is_refused():
    # given production with a digest, as the pipeline deploys it
    digest = "sha256:" + "a" * 64
    result = render("production", "--set", "image.tag=1.4.0", "--set", f"image.digest={digest}")
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    images = {c["image"] for pod in _pod_specs(objects).values() for c in pod["containers"]}
    # then every image names a version, the app's also the digest
    assert f"ghcr.io/places-project/places:1.4.0@{digest}" in images
    assert all(":" in image.rsplit("/", 1)[-1] and ":latest" not in image for image in images)
    # when latest is asked for, then the chart refuses to render
    refused = render("production", "--set", "image.tag=latest")
    assert refused.returncode != 0
    assert "latest is refused" in refused.stderr


def test_ingress_has_tls_and_takes_a_2_gib_upload(objects):
    ingress = _of_kind(objects, "Ingress")["places"]
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["tls"][0]["secretName"]
    # nginx's k, m and g are binary multiples
    body_size = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert _mib(re.sub(r"([kmg])$", lambda m: m.group(1).upper() + "i", body_size)) >= 2048
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "on"


def test_prometheus_rule_is_the_alerts_file_itself():
    # given production's PrometheusRule and the rules Compose's Prometheus loads
    result = render("production")
    rule = _of_kind(list(yaml.safe_load_all(result.stdout)), "PrometheusRule")["places"]
    source = yaml.safe_load((ROOT / "docker" / "prometheus" / "alerts.yml").read_text())
    # then the groups are the same
    assert rule["spec"]["groups"] == source["groups"]


def test_database_tier_has_replicas_backups_and_a_session_pooler():
    result = render("production", "--set", "app.enabled=false")
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    cluster = _of_kind(objects, "Cluster")["places-db"]["spec"]
    assert cluster["instances"] >= 2
    assert cluster["backup"]["barmanObjectStore"]["destinationPath"].startswith("s3://")
    assert cluster["postgresql"]["parameters"]["archive_timeout"]
    backup = _of_kind(objects, "ScheduledBackup")["places-db-daily"]["spec"]
    assert backup["cluster"]["name"] == "places-db"
    pooler = _of_kind(objects, "Pooler")["places-db-pooler-rw"]["spec"]
    # transaction pooling breaks session advisory locks and server-side cursors
    assert pooler["pgbouncer"]["poolMode"] == "session"
    # and the app's own objects stay in the other release
    assert "places-web" not in _of_kind(objects, "Deployment")


def test_custom_resources_match_their_schemas_and_a_wrong_field_fails():
    # given production's custom resources, all valid
    result = render("production")
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    checker = _load_checker()
    assert checker.check(documents) == []
    # when a field is misspelt in the Cluster and a kind has no schema
    broken = copy.deepcopy(documents)
    next(d for d in broken if d["kind"] == "Cluster")["spec"]["instance"] = 3
    broken.append(
        {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"}}
    )
    # then both are reported
    errors = checker.check(broken)
    assert any("'instance' was unexpected" in e for e in errors)
    assert any(e.startswith("ScaledObject/x: no schema") for e in errors)


def _load_checker():
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader(
        "check_k8s_crds", str(ROOT / "bin" / "check-k8s-crds")
    )
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    loader.exec_module(module)
    return module


def test_a_password_file_completes_a_database_url_that_has_none(tmp_path):
    # given a URL without a password and the password in a file, as the chart mounts it
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DATABASES['default']['PASSWORD'], s.DATABASES['replica']['PASSWORD'])"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": "postgis://places@db-rw:5432/places",
        "REPLICA_DATABASE_URL": "postgis://places@db-ro:5432/places",
        "DATABASE_PASSWORD_FILE": str(secret),
    }
    # when the settings load
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    # then both connections use it
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["s3cret", "s3cret"]
    # and a URL that carries its own password keeps it
    from config.settings.base import _database

    assert (
        _database("postgis://places:own@db-rw:5432/places", password="s3cret")["PASSWORD"] == "own"
    )


def _readme_blocks() -> list[str]:
    text = (ROOT / "k8s" / "README.md").read_text()
    return re.findall(r"^ *```(?:yaml)?\n(.*?)^ *```", text, flags=re.S | re.M)


def test_the_runbook_restore_cluster_matches_the_schema():
    # given the recovery Cluster of k8s/README.md's worked example
    (block,) = [b for b in _readme_blocks() if "bootstrap:" in b and "recovery:" in b]
    cluster = yaml.safe_load(textwrap.dedent(block))
    # then it is a valid Cluster restoring from the chart's backup bucket to a time
    assert _load_checker().check([cluster]) == []
    assert cluster["spec"]["bootstrap"]["recovery"]["recoveryTarget"]["targetTime"]
    production = yaml.safe_load((CHART / "environments" / "production.yaml").read_text())
    store = cluster["spec"]["externalClusters"][0]["barmanObjectStore"]
    assert store["destinationPath"] == production["database"]["backup"]["destinationPath"]


def test_the_runbook_commands_render_and_name_objects_that_exist():
    # given every helm install/upgrade command of k8s/README.md, rendered instead of applied
    commands = [
        line.strip()
        for block in _readme_blocks()
        for line in block.splitlines()
        if line.strip().startswith("helm upgrade")
    ]
    assert len(commands) >= 3
    names: set[str] = set()
    for command in commands:
        words = command.replace("sha256:...", "sha256:" + "0" * 64).split()
        words = [w for w in words if w not in ("--install", "--wait", "--atomic")]
        if "--timeout" in words:
            del words[words.index("--timeout") : words.index("--timeout") + 2]
        release, chart, rest = words[2], words[3], words[4:]
        # when it is rendered with helm template
        result = subprocess.run(
            [_helm(), "template", release, str(ROOT / chart), *rest],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        # then it renders
        assert result.returncode == 0, (command, result.stderr)
        for doc in yaml.safe_load_all(result.stdout):
            if doc:
                names.add(f"{doc['kind'].lower()}/{doc['metadata']['name']}")
    names.add("cluster/places-db-restore")  # the worked example's own Cluster
    # and every object a kubectl command of the runbook names is one of them
    text = "\n".join(_readme_blocks()) + (ROOT / "k8s" / "README.md").read_text()
    short = {"hpa": "horizontalpodautoscaler"}
    named = set(re.findall(r"\b(deployment|job|cluster|scheduledbackup)/([a-z0-9-]+)", text))
    for kind, listed in re.findall(r"get (hpa|cluster|scheduledbackup) ([a-z0-9 -]+)", text):
        objects = itertools.takewhile(lambda word: not word.startswith("-"), listed.split())
        named |= {(short.get(kind, kind), name) for name in objects}
    assert named
    missing = {f"{kind}/{name}" for kind, name in named} - names
    assert not missing


@contextlib.contextmanager
def _serving() -> Iterator[str]:
    """The site served over HTTP from a thread (the pipeline's smoke test is a separate
    process); the thread's own connection reads the test database outside the test's
    transaction, which these endpoints need no rows of."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from django.core.wsgi import get_wsgi_application
    from django.db import connections

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=QuietHandler)

    def serve() -> None:
        try:
            server.serve_forever(poll_interval=0.05)
        finally:
            connections.close_all()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.mark.django_db
def test_the_pipeline_smoke_test_passes_on_a_running_site_and_fails_elsewhere():
    smoke = [sys.executable, str(ROOT / "bin" / "smoke-test")]
    with _serving() as url:
        # when the release pipeline's smoke test runs against a live site
        result = subprocess.run([*smoke, url], capture_output=True, text=True, timeout=60)
        # then readiness, the API call and the tile all answer as expected
        assert result.returncode == 0, result.stderr
        assert "smoke test passed" in result.stdout
        # and against a URL where none of them is served, it fails naming each
        result = subprocess.run(
            [*smoke, url + "/nowhere"], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert result.stderr.count("smoke test failed") == 3
