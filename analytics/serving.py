"""How stored results are answered: the JSON shapes, their flat CSV rows, and the cache key
that follows the results version.

Shares and rates are stored counts divided at answer time (arithmetic on one row, not a
recomputation). Every answer names where and as of which versions its rows were computed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.http import HttpResponse
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from analytics.models import RegionSummary
from analytics.services.results import results_version
from places.csv_cells import safe_cell
from places.models import Religion
from places.serving.responses import cached_bytes_response

# Every key holds the results version, so this bounds memory, not staleness.
RESULTS_TTL = 24 * 3600
QUALITY = ("unnamed", "unknown_religion", "outside_region", "duplicate_coordinates")


def _ratio(part: float, whole: float | None) -> float | None:
    return round(part / whole, 6) if whole else None


def summary_json(summary: RegionSummary) -> dict[str, Any]:
    """One region's summary, as the summary, comparison and listing endpoints give it."""
    places = summary.places
    return {
        "region": {
            "id": summary.region_id,
            "code": summary.code,
            "name": summary.name,
            "level": summary.level,
        },
        "places": places,
        "population": summary.population,
        "area_km2": summary.area_km2,
        "per_1000_km2": summary.per_1000_km2,
        "per_100k_people": summary.per_100k_people,
        "by_religion": summary.by_religion,
        "religion_shares": {k: _ratio(v, places) for k, v in summary.by_religion.items()},
        "by_denomination": summary.by_denomination,
        "diversity": {"shannon": summary.shannon, "simpson": summary.simpson},
        "dated_places": summary.dated_places,
        "founding_decades": dict(sorted(summary.founding_decades.items(), key=_decade)),
        "quality": {
            name: {"count": getattr(summary, name), "rate": _ratio(getattr(summary, name), places)}
            for name in QUALITY
        },
        "computed": {
            "on": summary.computed_on,
            "data_version": summary.data_version,
            "region_version": summary.region_version,
            "at": summary.computed_at.isoformat(),
        },
    }


def _decade(item: tuple[str, Any]) -> int:
    return int(item[0])


def summary_flat(summary: RegionSummary) -> dict[str, Any]:
    """One CSV row: fixed columns, one per religion of the vocabulary, JSON for the rest."""
    data = summary_json(summary)
    row: dict[str, Any] = {
        "region_id": summary.region_id,
        "code": summary.code,
        "name": summary.name,
        "level": summary.level,
        "places": summary.places,
        "population": summary.population,
        "area_km2": summary.area_km2,
        "per_1000_km2": summary.per_1000_km2,
        "per_100k_people": summary.per_100k_people,
        "shannon": summary.shannon,
        "simpson": summary.simpson,
        "dated_places": summary.dated_places,
    }
    for name in QUALITY:
        row[name] = data["quality"][name]["count"]
        row[f"{name}_rate"] = data["quality"][name]["rate"]
    for religion in Religion.values:
        row[f"religion_{religion}"] = summary.by_religion.get(religion, 0)
    row["by_denomination"] = json.dumps(summary.by_denomination, sort_keys=True)
    row["founding_decades"] = json.dumps(data["founding_decades"])
    row["computed_on"] = summary.computed_on
    row["data_version"] = summary.data_version
    row["computed_at"] = data["computed"]["at"]
    return row


def csv_bytes(rows: Iterable[Mapping[str, Any]], *, columns: list[str] | None = None) -> bytes:
    """Rows as CSV with a header, every text cell spreadsheet-safe (``places.csv_cells``);
    empty values for None."""
    rows = list(rows)
    out = io.StringIO()
    names = columns or (list(rows[0]) if rows else [])
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow(
            ""
            if row.get(n) is None
            else safe_cell(str(row[n]))
            if isinstance(row[n], str)
            else row[n]
            for n in names
        )
    return out.getvalue().encode()


def results_response(
    request: Request,
    *,
    name: str,
    params: Mapping[str, Any],
    fmt: str,
    build_json: Callable[[], Any],
    build_csv: Callable[[], bytes],
    canonical: bool = False,
) -> HttpResponse:
    """The answer under a key holding the results version (one small read) and every
    parameter, so it is built once per change of the stored results; ETag and 304 as for
    the other cached answers."""
    canonical_params = json.dumps(params, sort_keys=True, default=str)
    key = f"analytics:{name}:{fmt}:{canonical_params}:{results_version()}"
    if fmt == "csv":
        return cached_bytes_response(
            request,
            key=key,
            ttl=RESULTS_TTL,
            build=build_csv,
            content_type="text/csv; charset=utf-8",
            canonical=canonical,
        )
    return cached_bytes_response(
        request,
        key=key,
        ttl=RESULTS_TTL,
        build=lambda: JSONRenderer().render(build_json()),
        content_type="application/json",
        canonical=canonical,
    )
