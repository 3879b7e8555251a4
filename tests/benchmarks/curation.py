#!/usr/bin/env python
"""Curators' admin on a million places (``make bench``): the places list, a name search, the
list filtered by dataset and data-quality flag, and a place's history page.

The list by flag is also measured with one more filter (status, a country, recent changes),
which curators combine with it and which the flags' index alone does not answer.

Runs on the benchmark database (``BENCH_DATABASE_URL``, the generated set of ``load.py``,
reused while its parameters are unchanged). The flags are computed once over the whole set
first (timed: what beat's refresh costs after an import of that size), and one place is given
1,000 changes for the history page. Each page is requested in-process through Django's test
client as a signed-in superuser (the view, the admin and the database; no HTTP server),
``--reads`` times after one untimed request. Results go to
``tests/benchmarks/results/curation.{json,md}``.

Target (issue 17): p95 ≤ 300 ms for each page.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).with_name("results")
DEFAULT_BENCH_DB = "postgis://postgres@127.0.0.1:5432/places_bench"
DEFAULT_BENCH_REDIS = "redis://127.0.0.1:6379/10"
TARGET_MS = 300
HISTORY_CHANGES = 1_000
# The flag most places of the generated set have (about 6 %).
COMMON_FLAG = "unknown_religion"


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _reads(client: Any, url: str, *, n: int, expect: str | None = None) -> dict[str, Any]:
    first = client.get(url)
    if first.status_code != 200:
        raise RuntimeError(f"{url}: {first.status_code}")
    body = first.content.decode()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code}")
    p95 = _p(times, 0.95)
    return {
        "url": url,
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(p95, 1),
        "met": p95 <= TARGET_MS,
        "rows_on_page": body.count('class="action-select"'),
        **({"finds": expect in body} if expect is not None else {}),
    }


def _history_place(user: Any) -> int:
    """A place with ``HISTORY_CHANGES`` logged changes (made once; found again on reruns)."""
    from django.db.models import Count

    from places.models import Place, PlaceChange
    from places.services import place_update

    busy = (
        PlaceChange.objects.values("place_id")
        .annotate(n=Count("*"))
        .filter(n__gte=HISTORY_CHANGES)
        .values_list("place_id", flat=True)[:1]
    )
    if busy:
        return busy[0]
    place = Place.objects.filter(status="active").order_by("pk").first()
    if place is None:
        raise RuntimeError("the benchmark set has no place")
    base = place.name
    for i in range(HISTORY_CHANGES):
        place = place_update(place=place, data={"name": f"{base} ({i % 2})"}, user=user)
    return place.pk


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--places", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20_240_601)
    parser.add_argument("--reads", type=int, default=40)
    args = parser.parse_args(argv)

    bench_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_BENCH_DB)
    os.environ["DATABASE_URL"] = bench_url
    os.environ["REPLICA_DATABASE_URL"] = ""
    os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", DEFAULT_BENCH_REDIS)
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.local"
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    from places.models import Dataset, Place, PlaceFlag
    from places.services.quality import quality_flags_refresh
    from tests.benchmarks.dataset import Parameters
    from tests.benchmarks.load import DATASET_SLUG, bench_data_ensure

    loaded = bench_data_ensure(
        url=bench_url, params=Parameters(places=args.places, seed=args.seed), reload=False
    )
    dataset = Dataset.objects.get(slug=DATASET_SLUG)
    results: dict[str, Any] = {"set": loaded}

    started = time.perf_counter()
    flagged = quality_flags_refresh(dataset_id=dataset.pk)
    results["flags_refresh_s"] = round(time.perf_counter() - started, 1)
    results["places_flagged"] = flagged
    results["flags"] = {
        row["flag"]: row["n"]
        for row in PlaceFlag.objects.filter(dataset=dataset)
        .values("flag")
        .annotate(n=django.db.models.Count("*"))
        .order_by()
    }

    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(
        username="bench-curator", defaults={"is_staff": True, "is_superuser": True}
    )
    started = time.perf_counter()
    history_id = _history_place(user)
    results["history_setup_s"] = round(time.perf_counter() - started, 1)

    # An accented name of the set, searched without its accents.
    accented = (
        Place.objects.filter(dataset=dataset, name__regex=r"[ãáéíóúçñü]")
        .values_list("name", flat=True)
        .first()
    )
    import unicodedata

    plain = "".join(
        c for c in unicodedata.normalize("NFKD", accented or "") if not unicodedata.combining(c)
    )

    # The country of most places with the common flag: the filter combined with it below.
    country_id = (
        PlaceFlag.objects.filter(dataset=dataset, flag=COMMON_FLAG)
        .values("place__country_id")
        .annotate(n=django.db.models.Count("*"))
        .order_by("-n")
        .values_list("place__country_id", flat=True)
        .first()
    )
    results["flag_and_country"] = country_id

    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    changelist = "/admin/places/place/"
    pages = {
        "changelist": (changelist, None),
        "search_accented_as_typed": (f"{changelist}?{urlencode({'q': accented})}", accented),
        "search_without_accents": (f"{changelist}?{urlencode({'q': plain})}", accented),
        **{
            f"dataset_and_flag_{flag}": (
                f"{changelist}?dataset__id__exact={dataset.pk}&flag={flag}",
                None,
            )
            for flag in ("no_name", COMMON_FLAG, "duplicate_coordinates")
        },
        # A flag with another filter: counted and paged by the places table as well.
        f"flag_{COMMON_FLAG}_and_status": (
            f"{changelist}?flag={COMMON_FLAG}&status__exact=active",
            None,
        ),
        f"dataset_flag_{COMMON_FLAG}_and_country": (
            f"{changelist}?dataset__id__exact={dataset.pk}&flag={COMMON_FLAG}&country={country_id}",
            None,
        ),
        f"flag_{COMMON_FLAG}_and_changed_30d": (
            f"{changelist}?flag={COMMON_FLAG}&changed=30d",
            None,
        ),
        "history_1000_changes": (f"{changelist}{history_id}/history/", None),
        "quality_counts": (f"{changelist}quality/", None),
    }
    results["pages"] = {
        name: _reads(client, url, n=args.reads, expect=expect)
        for name, (url, expect) in pages.items()
    }
    results["searched"] = {"accented": accented, "plain": plain}

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "curation.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = [
        "# Curation admin on the benchmark set",
        "",
        f"{loaded['places']:,} places; flags computed in {results['flags_refresh_s']} s "
        f"({results['places_flagged']:,} places flagged: {results['flags']}).",
        "",
        f"| page | p50 ms | p95 ms | ≤ {TARGET_MS} ms | rows | finds |",
        "|---|---:|---:|---|---:|---|",
    ]
    for name, row in results["pages"].items():
        lines.append(
            f"| {name} | {row['p50_ms']} | {row['p95_ms']} | {'yes' if row['met'] else 'no'} "
            f"| {row['rows_on_page']} | {row.get('finds', '')} |"
        )
    (RESULTS / "curation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
