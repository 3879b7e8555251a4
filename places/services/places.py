"""Writes to places by curators and devices. Every change is recorded in ``PlaceChange``."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from django.contrib.gis.geos import GEOSGeometry
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from places import selectors
from places.models import (
    ChangeOperation,
    ChangeSource,
    Dataset,
    Place,
    PlaceChange,
    PlaceStatus,
)
from places.services.quality import place_flags_refresh
from places.services.regions import regions_hold_for_locating

# The fields a dataset's rows give a place: imports compare, write and log exactly these
# (``ingestion.services.imports.diff``), and curators may fix them.
SOURCE_FIELDS = (
    "name",
    "religion",
    "religion_raw",
    "denominations",
    "denomination_raw",
    "location",
    "footprint",
    "country",
    "region",
    "tags",
    "start_date",
    "start_date_raw",
    "end_date",
    "end_date_raw",
)
# Fields a curator or device may change; the rest (keys, bookkeeping) are managed here.
EDITABLE_FIELDS = (*SOURCE_FIELDS, "status", "merged_into")


def _json_value(value: Any) -> Any:
    """The form a field value takes in the change log (JSON, geometry as GeoJSON)."""
    if isinstance(value, GEOSGeometry):
        return json.loads(value.geojson)
    if isinstance(value, Model):
        return value.pk
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def place_log_key(field: str) -> str:
    """Foreign keys are logged by column (``country_id``), as the set-based imports do."""
    return f"{field}_id" if Place._meta.get_field(field).is_relation else field


def dataset_get_or_create(*, slug: str, defaults: dict[str, Any] | None = None) -> Dataset:
    """The dataset with this slug; created with ``defaults`` (name defaults to the slug)."""
    values = {"name": slug, **(defaults or {})}
    dataset, _ = Dataset.objects.get_or_create(slug=slug, defaults=values)
    return dataset


@transaction.atomic
def place_create(
    *, dataset: Dataset, source_key: str, data: dict[str, Any], user: Any = None
) -> Place:
    """Create a place and its ``create`` change (version 1); region and country, unless
    given, by point in polygon."""
    regions_hold_for_locating()
    place = Place(dataset=dataset, source_key=source_key, **data)
    _assign_regions(place, explicit=set(data))
    place.full_clean(exclude=["country", "region"])
    place.save()
    place.refresh_from_db()
    changes = {
        place_log_key(f): {"old": None, "new": _json_value(getattr(place, f))}
        for f in EDITABLE_FIELDS
        if getattr(place, f) not in (None, "", [], {})
    }
    _record(place=place, operation=ChangeOperation.CREATE, changes=changes, user=user)
    place_flags_refresh(place_ids=[place.pk], dataset_id=place.dataset_id)
    return place


class PlaceVersionConflict(Exception):
    """The place changed since the caller read it; its edit would overwrite that change."""

    def __init__(self, *, expected: int, current: int) -> None:
        super().__init__(
            f"the place is at version {current}, not {expected}: it was changed meanwhile"
        )
        self.expected, self.current = expected, current


@transaction.atomic
def place_update(
    *,
    place: Place,
    data: dict[str, Any],
    user: Any = None,
    device_id: str = "",
    comment: str = "",
    operation: str = ChangeOperation.UPDATE,
    expected_version: int | None = None,
    reverts: PlaceChange | None = None,
) -> Place:
    """Apply ``data`` to ``place``; record old and new values of the fields that changed.

    The row is locked and re-read first, so two concurrent edits are serialised and each
    logs the values it actually replaced. With ``expected_version`` the edit is refused
    (``PlaceVersionConflict``) when someone else changed the place since it was read.
    Nothing is written when nothing changed. ``reverts`` is logged as the change a revert
    or restore goes back on (``places.services.history``).
    """
    unknown = set(data) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
    if "location" in data:
        # Before the row lock: region maintenance takes the regions lock, then place rows.
        regions_hold_for_locating()
    current = Place.objects.select_for_update().get(pk=place.pk)
    if expected_version is not None and current.version != expected_version:
        raise PlaceVersionConflict(expected=expected_version, current=current.version)
    changes: dict[str, dict[str, Any]] = {}
    old_location = current.location
    for field, new in data.items():
        old = getattr(current, field)
        if _json_value(old) != _json_value(new):
            changes[place_log_key(field)] = {"old": _json_value(old), "new": _json_value(new)}
            setattr(current, field, new)
    if "location" in changes:
        before = (current.region_id, current.country_id)
        _assign_regions(current, explicit=set(data))
        for field, old in zip(("region_id", "country_id"), before, strict=True):
            if getattr(current, field) != old:
                changes[field] = {"old": old, "new": getattr(current, field)}
    if not changes:
        return current
    current.full_clean(exclude=["country", "region", "merged_into"])
    current.version += 1
    current.updated_at = timezone.now()
    current.save()
    _record(
        place=current,
        operation=operation,
        changes=changes,
        user=user,
        device_id=device_id,
        comment=comment,
        reverts=reverts,
    )
    # Its old coordinates too: places left there may no longer share them.
    moved = [old_location] if "location" in changes else []
    place_flags_refresh(place_ids=[current.pk], dataset_id=current.dataset_id, also_at=moved)
    return current


def _assign_regions(place: Place, *, explicit: set[str]) -> None:
    """Region and country by point in polygon (``places.locate``), unless the caller set
    them. The caller holds ``regions_hold_for_locating``."""
    if place.location is None:
        return
    region_id, country_id = selectors.regions_for_point(lon=place.location.x, lat=place.location.y)
    if "region" not in explicit:
        place.region_id = region_id
    if "country" not in explicit:
        place.country_id = country_id


def place_retire(
    *, place: Place, user: Any = None, end_date: dt.date | None = None, comment: str = ""
) -> Place:
    """Retire a place (never delete it): status ``retired`` with an end date."""
    data: dict[str, Any] = {"status": PlaceStatus.RETIRED}
    if end_date or not place.end_date:
        data["end_date"] = end_date or timezone.now().date()
    return place_update(
        place=place, data=data, user=user, comment=comment, operation=ChangeOperation.RETIRE
    )


# Many retirements in one statement, logged as place_retire logs one: the rows are locked in
# id order and re-checked (still active) under the lock. A place whose start date lies after
# the end date it would get is left alone (its dates would contradict each other).
RETIRE_MANY = """
WITH targets AS (
    SELECT id, end_date AS old_end FROM places_place
    WHERE id = ANY(%(ids)s) AND status = 'active'
      AND (end_date IS NOT NULL OR start_date IS NULL OR start_date <= %(today)s)
    ORDER BY id FOR UPDATE
), gone AS (
    UPDATE places_place p SET status = 'retired', end_date = COALESCE(p.end_date, %(today)s),
        version = p.version + 1, updated_at = now()
    FROM targets t WHERE p.id = t.id
    RETURNING p.id, p.dataset_id, p.version, p.end_date, t.old_end
)
INSERT INTO places_placechange (place_id, dataset_id, operation, changes, place_version,
                                source, user_id, device_id, comment)
SELECT id, dataset_id, 'retire',
       jsonb_build_object('status', jsonb_build_object('old', 'active', 'new', 'retired'))
       || CASE WHEN old_end IS NULL
               THEN jsonb_build_object('end_date', jsonb_build_object('old', NULL, 'new', end_date))
               ELSE '{}'::jsonb END,
       version, %(source)s, %(user)s, '', %(comment)s
FROM gone ORDER BY id
"""


@transaction.atomic
def places_retire(*, place_ids: Sequence[int], user: Any = None, comment: str = "") -> int:
    """Retire the active places among ``place_ids`` in one statement (the admin's "retire
    selected", thousands at once), each logged as ``place_retire`` logs it, with ``comment``.
    Returns how many were retired."""
    known = user is not None and getattr(user, "is_authenticated", False)
    with connection.cursor() as cursor:
        cursor.execute(
            RETIRE_MANY,
            {
                "ids": list(place_ids),
                "today": timezone.now().date(),
                "source": ChangeSource.USER if known else ChangeSource.SYSTEM,
                "user": user.pk if known else None,
                "comment": comment,
            },
        )
        retired = cursor.rowcount
    # A retired place no longer makes the places at its coordinates duplicates.
    by_dataset: dict[int, list[int]] = {}
    for place_id, dataset_id in Place.objects.filter(pk__in=place_ids).values_list(
        "pk", "dataset_id"
    ):
        by_dataset.setdefault(dataset_id, []).append(place_id)
    for dataset_id, ids in by_dataset.items():
        place_flags_refresh(place_ids=ids, dataset_id=dataset_id)
    return retired


def _record(
    *,
    place: Place,
    operation: str,
    changes: dict[str, Any],
    user: Any = None,
    device_id: str = "",
    comment: str = "",
    reverts: PlaceChange | None = None,
) -> PlaceChange:
    if user is not None and getattr(user, "is_authenticated", False):
        source = ChangeSource.USER
    elif device_id:
        source = ChangeSource.DEVICE
    else:
        source = ChangeSource.SYSTEM
    return PlaceChange.objects.create(
        place=place,
        dataset_id=place.dataset_id,
        operation=operation,
        changes=changes,
        place_version=place.version,
        source=source,
        user=user if source == ChangeSource.USER else None,
        device_id=device_id,
        comment=comment,
        reverts=reverts,
    )
