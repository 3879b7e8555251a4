"""The review queue: contributors propose edits, reviewers of the dataset approve or reject.

A proposal stores the proposed values and the same fields as the place had them
(``base_values``, at ``base_version``). An approval re-reads the place under its row lock and
compares field by field: a field someone changed since the proposal, to something other than
the proposed value, is a conflict, and the approval is refused (``ProposalConflict``, naming
each field with its value then, now and proposed) unless the reviewer confirms the overwrite.
The values are applied by ``place_update`` in the approval's transaction, so the edit is
logged like any other: the reviewer as the change's user, the comment naming the proposer,
and the proposal keeps the change it made. Rights come from ``places.access`` (propose,
review, per dataset); nobody reviews their own proposal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.gis.gdal.error import GDALException
from django.contrib.gis.geos import GEOSException
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from places import access
from places.access import Action
from places.models import Place, PlaceChange
from places.models_curation import PlaceProposal, ProposalStatus
from places.services.history import HistoryError, _data
from places.services.places import SOURCE_FIELDS, _json_value, place_update
from places.services.regions import regions_hold_for_locating

# What a proposal may change: the source fields, except region and country, which follow
# the location (point in polygon) when a proposal moves it.
PROPOSABLE_FIELDS = tuple(f for f in SOURCE_FIELDS if f not in ("country", "region"))


class ProposalError(Exception):
    """A proposal that cannot be approved or rejected now; the message says why."""


@dataclass(frozen=True)
class FieldConflict:
    field: str
    base: Any  # the value when proposed
    current: Any  # the value now
    proposed: Any


class ProposalConflict(ProposalError):
    """Fields changed since the proposal, to other values than proposed."""

    def __init__(self, *, proposal: PlaceProposal, conflicts: list[FieldConflict]) -> None:
        self.proposal, self.conflicts = proposal, conflicts
        names = ", ".join(c.field for c in conflicts)
        super().__init__(
            f"Proposal #{proposal.pk} was not applied: the place changed since it was "
            f"proposed, in {names}. Approving would overwrite those changes; approve anyway "
            "only if that is meant."
        )


def _current_values(place: Place, fields: list[str]) -> dict[str, Any]:
    return {f: _json_value(getattr(place, f)) for f in fields}


def _parse(values: dict[str, Any]) -> dict[str, Any]:
    """Proposed values (the API's JSON, or the admin form's Python values) as the place's
    fields take them; a value that cannot be one is a ``ValidationError`` naming its field."""
    unknown = sorted(set(values) - set(PROPOSABLE_FIELDS))
    if unknown:
        raise ValidationError(
            {
                f: f"{f} cannot be proposed (allowed: {', '.join(PROPOSABLE_FIELDS)})"
                for f in unknown
            }
        )
    data: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for field, value in values.items():
        try:
            data.update(_data({field: _json_value(value)}))
        except (HistoryError, ValueError, TypeError, GEOSException, GDALException) as exc:
            errors[field] = f"{field}: not a valid value ({exc})"
    if errors:
        raise ValidationError(errors)
    return data


def proposal_create(
    *, place: Place, user: Any, values: dict[str, Any], comment: str = ""
) -> PlaceProposal:
    """Store a pending proposal of ``values`` for ``place`` by ``user``, who must have the
    propose right in its dataset (``PermissionDenied`` otherwise). Only the fields whose
    value differs from the place's are kept; values are validated as the place would be
    (``ValidationError`` by field), and a proposal that changes nothing is refused."""
    access.require(user, Action.PROPOSE, place.dataset_id)
    data = _parse(values)
    candidate = Place.objects.get(pk=place.pk)
    for field, value in data.items():
        setattr(candidate, field, value)
    candidate.full_clean(exclude=["country", "region", "merged_into"], validate_unique=False)
    proposed = _current_values(candidate, list(data))
    current = _current_values(Place.objects.get(pk=place.pk), list(data))
    changed = {f: v for f, v in proposed.items() if current[f] != v}
    if not changed:
        raise ValidationError({"values": "The place already has these values."})
    version = Place.objects.values_list("version", flat=True).get(pk=place.pk)
    return PlaceProposal.objects.create(
        place_id=place.pk,
        dataset_id=place.dataset_id,
        proposer=user,
        values=changed,
        base_values={f: current[f] for f in changed},
        base_version=version,
        comment=comment,
    )


def proposal_conflicts(
    *, proposal: PlaceProposal, place: Place | None = None
) -> list[FieldConflict]:
    """The proposed fields that changed since the proposal to something else than proposed."""
    place = place or Place.objects.get(pk=proposal.place_id)
    current = _current_values(place, list(proposal.values))
    return [
        FieldConflict(field=f, base=proposal.base_values.get(f), current=current[f], proposed=v)
        for f, v in proposal.values.items()
        if current[f] != proposal.base_values.get(f) and current[f] != v
    ]


def _lock_pending(proposal: PlaceProposal, user: Any) -> PlaceProposal:
    locked = PlaceProposal.objects.select_for_update().get(pk=proposal.pk)
    access.require(user, Action.REVIEW, locked.dataset_id)
    if locked.status != ProposalStatus.PENDING:
        raise ProposalError(f"Proposal #{locked.pk} was already {locked.status}.")
    if locked.proposer_id == getattr(user, "pk", None):
        raise ProposalError("A proposal is reviewed by someone else than its proposer.")
    return locked


@transaction.atomic
def proposal_approve(
    *, proposal: PlaceProposal, user: Any, comment: str = "", force: bool = False
) -> PlaceProposal:
    """Apply a pending proposal through ``place_update`` and mark it approved, in one
    transaction. Refused with ``ProposalConflict`` when a proposed field changed since the
    proposal (unless ``force``), ``ProposalError`` when it is decided already or ``user`` is
    its proposer, ``PermissionDenied`` without the review right in its dataset."""
    locked = _lock_pending(proposal, user)
    if "location" in locked.values:
        regions_hold_for_locating()  # before the row lock, as place_update takes them
    place = Place.objects.select_for_update().get(pk=locked.place_id)
    conflicts = proposal_conflicts(proposal=locked, place=place)
    if conflicts and not force:
        raise ProposalConflict(proposal=locked, conflicts=conflicts)
    proposer = locked.proposer.get_username()
    note = f"Proposal #{locked.pk} by {proposer}, approved by {user.get_username()}"
    before = place.version
    updated = place_update(
        place=place,
        data=_parse(locked.values),
        user=user,
        comment=f"{note}: {comment}" if comment else note,
    )
    if updated.version != before:
        locked.applied_change = PlaceChange.objects.filter(place_id=place.pk).latest("seq")
    locked.status = ProposalStatus.APPROVED
    locked.reviewer = user
    locked.review_comment = comment
    locked.decided_at = timezone.now()
    locked.save()
    return locked


@transaction.atomic
def proposal_reject(*, proposal: PlaceProposal, user: Any, comment: str) -> PlaceProposal:
    """Mark a pending proposal rejected; the comment (required) tells the proposer why."""
    if not comment.strip():
        raise ValidationError({"comment": "Say why the proposal is rejected."})
    locked = _lock_pending(proposal, user)
    locked.status = ProposalStatus.REJECTED
    locked.reviewer = user
    locked.review_comment = comment
    locked.decided_at = timezone.now()
    locked.save()
    return locked
