"""A reproducible set of places of realistic density, for the serving benchmark.

Places cluster around the GeoNames cities of 15,000+ people (``data/``, see its
ATTRIBUTION.md): each place picks a city with a probability proportional to the city's
population, then lies at an exponentially distributed distance from its centre, within a
radius that grows with the population (a village of 10,000 spreads over about a kilometre, a
city of ten million over tens of kilometres); one place in six is "rural" and spreads five
times as wide. Religions follow the country's mix (approximate shares of places of worship;
continental mixes elsewhere), with an untagged share as in OpenStreetMap. The same parameters
and seed always give the same file, byte for byte.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CITIES = Path(__file__).with_name("data") / "geonames_cities15000.csv.gz"
# Bump when the generator changes what it writes: a loaded bench database with another
# version is reloaded.
GENERATOR_VERSION = 1

UNTAGGED = 0.06  # share of places without a religion tag (OSM has a few per cent)
RURAL_SHARE = 1 / 6
RURAL_SPREAD = 5.0
KM_PER_DEGREE = 111.32

# Approximate shares of places of worship per religion, by country (ISO 3166 alpha-2) and,
# for the rest, by continent (GeoNames time zone prefix). Rounded; they only need to give
# each region a believable mix and the map a believable legend.
COUNTRY_MIX: dict[str, dict[str, float]] = {
    "CN": {"buddhist": 40, "taoist": 18, "christian": 20, "muslim": 14, "other": 8},
    "IN": {"hindu": 74, "muslim": 15, "christian": 4, "sikh": 3, "jain": 2, "buddhist": 2},
    "US": {"christian": 91, "jewish": 3, "muslim": 2, "buddhist": 1, "hindu": 1, "other": 2},
    "ID": {"muslim": 86, "christian": 10, "hindu": 2, "buddhist": 2},
    "PK": {"muslim": 96, "hindu": 2, "christian": 2},
    "BR": {"christian": 95, "other": 4, "buddhist": 1},
    "NG": {"christian": 48, "muslim": 50, "other": 2},
    "BD": {"muslim": 88, "hindu": 10, "buddhist": 1, "christian": 1},
    "RU": {"christian": 76, "muslim": 20, "buddhist": 2, "jewish": 1, "other": 1},
    "MX": {"christian": 97, "other": 3},
    "JP": {"shinto": 50, "buddhist": 45, "christian": 4, "other": 1},
    "PH": {"christian": 90, "muslim": 9, "other": 1},
    "ET": {"christian": 65, "muslim": 34, "other": 1},
    "EG": {"muslim": 90, "christian": 10},
    "VN": {"buddhist": 60, "christian": 20, "other": 20},
    "IR": {"muslim": 97, "christian": 1, "zoroastrian": 1, "jewish": 0.5, "bahai": 0.5},
    "TR": {"muslim": 98, "christian": 1.5, "jewish": 0.5},
    "DE": {"christian": 91, "muslim": 6, "jewish": 1, "buddhist": 1, "other": 1},
    "TH": {"buddhist": 93, "muslim": 5, "christian": 2},
    "GB": {"christian": 90, "muslim": 5, "sikh": 1, "hindu": 1, "jewish": 1, "other": 2},
    "FR": {"christian": 90, "muslim": 7, "jewish": 1, "buddhist": 1, "other": 1},
    "IT": {"christian": 97, "muslim": 2, "jewish": 0.5, "other": 0.5},
    "ZA": {"christian": 88, "muslim": 4, "hindu": 3, "other": 5},
    "MM": {"buddhist": 88, "christian": 6, "muslim": 4, "hindu": 2},
    "KR": {"christian": 60, "buddhist": 38, "other": 2},
    "ES": {"christian": 97, "muslim": 2, "other": 1},
    "PL": {"christian": 99, "other": 1},
    "UA": {"christian": 97, "jewish": 1, "muslim": 1, "other": 1},
    "MY": {"muslim": 62, "buddhist": 18, "christian": 9, "hindu": 7, "taoist": 4},
    "NP": {"hindu": 80, "buddhist": 12, "muslim": 5, "christian": 3},
    "LK": {"buddhist": 70, "hindu": 13, "muslim": 10, "christian": 7},
    "IL": {"jewish": 76, "muslim": 18, "christian": 4, "bahai": 1, "other": 1},
    "TW": {"taoist": 45, "buddhist": 40, "christian": 12, "other": 3},
    "HK": {"taoist": 40, "buddhist": 35, "christian": 20, "muslim": 2, "other": 3},
    "SG": {"buddhist": 33, "taoist": 12, "christian": 25, "muslim": 17, "hindu": 8, "other": 5},
    "KH": {"buddhist": 95, "muslim": 3, "christian": 2},
    "LA": {"buddhist": 95, "christian": 3, "other": 2},
    "MN": {"buddhist": 90, "muslim": 5, "christian": 5},
    "KE": {"christian": 82, "muslim": 16, "other": 2},
    "TZ": {"christian": 60, "muslim": 38, "other": 2},
    "UG": {"christian": 85, "muslim": 14, "other": 1},
    "CD": {"christian": 95, "muslim": 3, "other": 2},
    "CA": {"christian": 88, "muslim": 3, "jewish": 2, "sikh": 2, "hindu": 1, "buddhist": 2},
    "AU": {"christian": 86, "buddhist": 5, "muslim": 4, "hindu": 2, "other": 3},
    "AR": {"christian": 97, "jewish": 1, "other": 2},
}
for _code in ("CO", "PE", "VE", "CL", "EC", "BO", "GT", "PT", "IE", "AT", "BE", "NL", "CH"):
    COUNTRY_MIX[_code] = {"christian": 96, "muslim": 2, "other": 2}
for _code in ("DZ", "MA", "SA", "IQ", "AF", "SD", "YE", "UZ", "TN", "SY", "AZ", "SN", "NE"):
    COUNTRY_MIX[_code] = {"muslim": 97, "christian": 2, "other": 1}
CONTINENT_MIX: dict[str, dict[str, float]] = {
    "Europe": {"christian": 88, "muslim": 8, "jewish": 1, "other": 3},
    "Africa": {"christian": 52, "muslim": 44, "other": 4},
    "America": {"christian": 94, "jewish": 1, "other": 5},
    "Asia": {"muslim": 45, "buddhist": 20, "christian": 16, "hindu": 10, "other": 9},
    "Australia": {"christian": 86, "buddhist": 5, "muslim": 4, "other": 5},
    "Pacific": {"christian": 94, "hindu": 3, "other": 3},
    "Indian": {"muslim": 50, "christian": 30, "hindu": 15, "other": 5},
}
FALLBACK_MIX = {"christian": 70, "muslim": 20, "other": 10}
# Everywhere, a little: interfaith chapels and the odd community of each.
SPRINKLE = {"multifaith": 0.3, "bahai": 0.2}

DENOMINATIONS: dict[str, list[tuple[str, float]]] = {
    "christian": [
        ("catholic", 45),
        ("protestant", 15),
        ("orthodox", 12),
        ("anglican", 6),
        ("methodist", 5),
        ("baptist", 6),
        ("pentecostal", 6),
        ("lutheran", 5),
    ],
    "muslim": [("sunni", 85), ("shia", 15)],
    "buddhist": [("mahayana", 55), ("theravada", 40), ("vajrayana", 5)],
    "jewish": [("orthodox", 50), ("reform", 30), ("conservative", 20)],
}
BUILDING = {
    "christian": "Church",
    "muslim": "Mosque",
    "hindu": "Temple",
    "buddhist": "Temple",
    "jewish": "Synagogue",
    "sikh": "Gurdwara",
    "shinto": "Shrine",
    "taoist": "Temple",
    "jain": "Derasar",
}


@dataclass(frozen=True)
class Parameters:
    places: int
    seed: int

    def fingerprint(self) -> str:
        """Changes with anything that changes the generated file."""
        digest = hashlib.sha256(CITIES.read_bytes()).hexdigest()
        payload = json.dumps(
            {**asdict(self), "generator": GENERATOR_VERSION, "cities_sha256": digest},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _cities() -> dict[str, np.ndarray]:
    with gzip.open(CITIES, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "name": np.array([r["name"] for r in rows], dtype=object),
        "lon": np.array([float(r["lon"]) for r in rows]),
        "lat": np.array([float(r["lat"]) for r in rows]),
        "country": np.array([r["country"] for r in rows], dtype=object),
        "continent": np.array([r["continent"] for r in rows], dtype=object),
        # A few capitals are listed with population 0; give them a village's weight.
        "population": np.maximum(np.array([int(r["population"]) for r in rows]), 1000),
    }


def _mix(country: str, continent: str) -> tuple[list[str], np.ndarray]:
    mix = dict(COUNTRY_MIX.get(country) or CONTINENT_MIX.get(continent) or FALLBACK_MIX)
    for religion, share in SPRINKLE.items():
        mix[religion] = mix.get(religion, 0) + share
    total = sum(mix.values())
    names = sorted(mix)
    shares = np.array([mix[n] / total for n in names]) * (1 - UNTAGGED)
    return [*names, ""], np.append(shares, UNTAGGED)


def generate_csv(params: Parameters, path: Path) -> int:
    """Write the places as a CSV the importer reads (``id`` key, ``lon``/``lat``, religion,
    denomination, name); returns the number of rows."""
    rng = np.random.default_rng(params.seed)
    cities = _cities()
    weights = cities["population"] / cities["population"].sum()
    city = rng.choice(len(weights), size=params.places, p=weights)
    # Radius (km) within which a city's places lie: grows with the square root-ish of the
    # population, as built-up areas do.
    scale_km = (cities["population"][city] / 10_000) ** 0.45
    rural = rng.random(params.places) < RURAL_SHARE
    scale_km = np.where(rural, scale_km * RURAL_SPREAD, scale_km)
    distance = rng.exponential(scale_km)
    angle = rng.uniform(0, 2 * np.pi, params.places)
    lat0, lon0 = cities["lat"][city], cities["lon"][city]
    lat = np.clip(lat0 + distance * np.sin(angle) / KM_PER_DEGREE, -84.9, 84.9)
    lon = lon0 + distance * np.cos(angle) / (KM_PER_DEGREE * np.cos(np.radians(lat0)))
    lon = (lon + 180) % 360 - 180

    religion = np.empty(params.places, dtype=object)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(city):
        groups.setdefault((cities["country"][c], cities["continent"][c]), []).append(i)
    for (country, continent), members in sorted(groups.items()):
        names, shares = _mix(country, continent)
        religion[members] = rng.choice(names, size=len(members), p=shares)
    denomination = np.full(params.places, "", dtype=object)
    for faith, options in DENOMINATIONS.items():
        members = np.flatnonzero(religion == faith)
        labels = [o[0] for o in options] + [""]
        shares = np.array([o[1] for o in options] + [60.0])  # most places carry none
        denomination[members] = rng.choice(labels, size=len(members), p=shares / shares.sum())
    number = rng.integers(1, 40, params.places)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "name", "religion", "denomination", "lon", "lat"])
    for i in range(params.places):
        faith = religion[i]
        building = BUILDING.get(faith, "Place of worship")
        writer.writerow(
            [
                f"bench-{i + 1}",
                f"{building} {number[i]}, {cities['name'][city[i]]}",
                faith,
                denomination[i],
                f"{lon[i]:.6f}",
                f"{lat[i]:.6f}",
            ]
        )
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return params.places
