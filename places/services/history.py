"""Going back in a place's history: revert one change, restore an earlier version, un-retire.

The change log keeps old and new values per field for every write (curators, imports, region
maintenance, devices), so going back needs nothing but the log. A revert or restore is a
change of its own, written through ``place_update``: it is logged with its author and the
change it goes back on (``PlaceChange.reverts``), and the change-log triggers move the data
versions, so caches, ETags and the edge change feed follow it like any other edit. Each one
is also an event of the security audit trail (``places.services.audit``).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.contrib.gis.geos import GEOSGeometry
from django.db import transaction
from django.db.models import Field

from places import selectors
from places.models import ChangeOperation, Place, PlaceChange, PlaceStatus, Region
from places.models_access import SecurityEventKind
from places.services.audit import security_event
from places.services.places import EDITABLE_FIELDS, place_log_key, place_update
from places.services.regions import regions_hold_for_locating

# Log key (``country_id``) -> model field (``country``), for the fields a revert may write.
_FIELD_OF_KEY = {place_log_key(field): field for field in EDITABLE_FIELDS}


class HistoryError(Exception):
    """A revert or restore that cannot be done; the message says why, for a curator."""


class RevertConflict(HistoryError):
    """Later changes touched fields the revert would write: reverting would undo them too."""

    def __init__(self, *, change: PlaceChange, later: dict[str, list[int]]) -> None:
        self.change, self.later = change, later
        named = "; ".join(
            f"{key} (by change {', '.join(f'#{seq}' for seq in seqs)})"
            for key, seqs in sorted(later.items())
        )
        super().__init__(
            f"Change #{change.seq} was not reverted: later changes touched the same fields: "
            f"{named}. Reverting would overwrite them; revert anyway only if that is meant."
        )


def _value(key: str, logged: Any) -> Any:
    """A logged value (JSON, geometry as GeoJSON, references by id) as the field takes it."""
    field = Place._meta.get_field(_FIELD_OF_KEY[key])
    if not isinstance(field, Field):  # every editable field is a concrete one
        raise TypeError(f"{key} is not a concrete field of a place")
    if logged is None:
        if field.null or field.is_relation:
            return None
        # Text, list and tag fields are never NULL on a place: their empty value stands in.
        return field.get_default()
    if field.name in ("location", "footprint"):
        return GEOSGeometry(json.dumps(logged), srid=4326)
    if field.name in ("start_date", "end_date"):
        return dt.date.fromisoformat(str(logged)[:10])
    if field.is_relation:
        model = Place if field.name == "merged_into" else Region
        target = model.objects.filter(pk=logged).defer(*_heavy(model)).first()
        if target is None:
            raise HistoryError(f"{key}: {model.__name__.lower()} {logged} no longer exists.")
        return target
    return logged


def _heavy(model: type[Place] | type[Region]) -> tuple[str, ...]:
    return ("geom",) if model is Region else ("footprint",)


def _data(values: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(values) - set(_FIELD_OF_KEY))
    if unknown:
        raise HistoryError(f"These fields cannot be written back: {', '.join(unknown)}.")
    return {_FIELD_OF_KEY[key]: _value(key, logged) for key, logged in values.items()}


def _lock(place_id: int, *, locating: bool) -> Place:
    # Region maintenance takes the regions lock before place rows: the same order here.
    if locating:
        regions_hold_for_locating()
    return Place.objects.select_for_update().only("id", "version", "status").get(pk=place_id)


def _latest_change(place: Place) -> PlaceChange:
    return PlaceChange.objects.filter(place_id=place.pk).order_by("-seq")[0]


@transaction.atomic
def change_revert(
    change: PlaceChange, *, user: Any, force: bool = False, comment: str = ""
) -> PlaceChange | None:
    """Write back the old values of the fields ``change`` touched, and only those.

    Refused (``RevertConflict``, naming the fields and the later changes) when a later change
    of the place touched one of them, unless ``force``. Creations are not reverted (retire
    the place instead). Returns the logged revert, or None when the place already holds the
    old values. The check runs under the place's row lock, so no edit slips in between.
    """
    if change.operation == ChangeOperation.CREATE:
        raise HistoryError(
            f"Change #{change.seq} created the place; a creation is not reverted: retire the "
            "place instead."
        )
    keys = sorted(change.changes)
    if not keys:
        raise HistoryError(f"Change #{change.seq} changed no field.")
    old = {key: change.changes[key].get("old") for key in keys}
    data = _data(old)
    _lock(change.place_id, locating="location" in keys)
    later = selectors.change_later_touching(change=change)
    if later and not force:
        raise RevertConflict(change=change, later=later)
    place = Place.objects.get(pk=change.place_id)
    before = place.version
    place = place_update(
        place=place,
        data=data,
        user=user,
        comment=comment or f"revert of change #{change.seq}",
        operation=ChangeOperation.REVERT,
        reverts=change,
    )
    return _audited(place, before, user=user, reverted=change)


def _audited(place: Place, before: int, *, user: Any, reverted: PlaceChange) -> PlaceChange | None:
    """The change just logged for ``place`` (None if nothing changed), with its event in the
    security audit trail: reverts and restores are among what admins review there."""
    if place.version == before:
        return None
    logged = _latest_change(place)
    security_event(
        SecurityEventKind.REVERT,
        user,
        dataset=place.dataset_id,
        place=place.pk,
        change=logged.seq,
        operation=logged.operation,
        reverts=reverted.seq,
        fields=sorted(logged.changes),
    )
    return logged


@transaction.atomic
def place_restore(
    *, place: Place, version: int, user: Any, comment: str = ""
) -> PlaceChange | None:
    """Bring back the place as it was at ``version``: every field changed since then takes
    its value of that version (the old value of the first change after it).

    One change is logged, referring to the change that made ``version``. Returns it, or None
    when the place already holds those values.
    """
    current = _lock(place.pk, locating=True)
    if not 1 <= version < current.version:
        raise HistoryError(
            f"Version {version} cannot be restored: the place is at version {current.version}."
        )
    target = PlaceChange.objects.filter(place_id=place.pk, place_version=version).first()
    if target is None:
        raise HistoryError(f"The change log has no version {version} of this place.")
    values: dict[str, Any] = {}
    since = PlaceChange.objects.filter(place_id=place.pk, place_version__gt=version)
    for changes in since.order_by("place_version").values_list("changes", flat=True):
        for key, logged in changes.items():
            values.setdefault(key, logged.get("old"))
    before = current.version
    restored = place_update(
        place=current,
        data=_data(values),
        user=user,
        comment=comment or f"restore of version {version}",
        operation=ChangeOperation.RESTORE,
        reverts=target,
    )
    return _audited(restored, before, user=user, reverted=target)


@transaction.atomic
def place_unretire(*, place: Place, user: Any, comment: str = "") -> PlaceChange | None:
    """Undo the place's latest retirement: a revert of that change (status and, when the
    retirement set it, the end date). Refused like any revert when a later change touched
    those fields."""
    current = _lock(place.pk, locating=False)
    if current.status != PlaceStatus.RETIRED:
        raise HistoryError(f"{place} is not retired (it is {current.status}).")
    retirement = (
        PlaceChange.objects.filter(place_id=place.pk, operation=ChangeOperation.RETIRE)
        .order_by("-seq")
        .first()
    )
    if retirement is None:
        raise HistoryError(f"The change log has no retirement of {place} to undo.")
    return change_revert(
        retirement, user=user, comment=comment or f"undo of retirement #{retirement.seq}"
    )
