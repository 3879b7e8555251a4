"""Merging two places into one, and undoing a merge.

A merge keeps one place (the survivor) and points the other at it: ``status = merged``,
``merged_into`` = the survivor. The curator chooses, field by field, which value the
survivor keeps. Everything goes through ``place_update``, so each step is a ``merge`` change
in the log with its author, and the change-log triggers move the data versions: tiles,
cached lists and ETags refresh, and the edge change feed sends the merged place as a
``delete`` tombstone with ``superseded_by``. Places that had been merged into the merged
place are pointed at the survivor as well, so ``merged_into`` always names a place that is
not merged itself (one hop: redirects and re-imports follow it once).

The pair's ``DuplicateCandidate`` records the decision and the changes the merge wrote; an
undo reverts them (``places.services.history.change_revert``, refused when a later change
touched the same fields unless forced). Merges and undos are security events.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.utils import timezone

from places import access
from places.access import Action
from places.models import ChangeOperation, Place, PlaceChange, PlaceStatus
from places.models_access import SecurityEventKind
from places.models_duplicates import DuplicateCandidate, DuplicateReason, DuplicateStatus
from places.services.audit import security_event
from places.services.duplicates import DuplicateDecisionError
from places.services.history import change_revert
from places.services.places import SOURCE_FIELDS, place_update
from places.services.regions import regions_hold_for_locating

# The fields a curator chooses between; region and country follow the chosen location.
MERGE_FIELDS = tuple(f for f in SOURCE_FIELDS if f not in ("country", "region"))


def _latest_seq(place: Place) -> int:
    return (
        PlaceChange.objects.filter(place_id=place.pk)
        .order_by("-seq")
        .values_list("seq", flat=True)[0]
    )


def _pair(first: int, second: int) -> tuple[int, int]:
    return (first, second) if first < second else (second, first)


def place_merge(
    *,
    survivor: Place,
    merged: Place,
    take: Iterable[str] = (),
    user: Any,
    comment: str = "",
) -> DuplicateCandidate:
    """Merge ``merged`` into ``survivor``; the survivor takes the fields named in ``take``
    from the merged place and keeps its own values of the others.

    Needs the merge right in both datasets (``PermissionDenied``). Refused
    (``DuplicateDecisionError``) unless both places are active and distinct. Returns the
    pair's candidate, now ``merged`` with the changes written (made if the finder had not
    proposed the pair).
    """
    if survivor.pk == merged.pk:
        raise DuplicateDecisionError("A place cannot be merged into itself.")
    chosen = sorted(set(take))
    unknown = [f for f in chosen if f not in MERGE_FIELDS]
    if unknown:
        raise DuplicateDecisionError(f"These fields cannot be taken over: {', '.join(unknown)}.")
    for dataset_id in {survivor.dataset_id, merged.dataset_id}:
        access.require(user, Action.MERGE, dataset_id)
    with transaction.atomic():
        if "location" in chosen:
            regions_hold_for_locating()  # before the row locks, as place_update takes them
        rows = {
            p.pk: p
            for p in Place.objects.select_for_update()
            .filter(pk__in=[survivor.pk, merged.pk])
            .order_by("pk")
        }
        keep, gone = rows[survivor.pk], rows[merged.pk]
        for place in (keep, gone):
            if place.status != PlaceStatus.ACTIVE:
                raise DuplicateDecisionError(
                    f"{place} (#{place.pk}) is {place.status}: only active places are merged."
                )
        a, b = _pair(keep.pk, gone.pk)
        first = rows[a]
        candidate, _ = DuplicateCandidate.objects.select_for_update().get_or_create(
            place_a_id=a,
            place_b_id=b,
            defaults={
                "dataset_a_id": first.dataset_id,
                "dataset_b_id": rows[b].dataset_id,
                "score": 1.0,
                "reasons": [DuplicateReason.CURATOR],
            },
        )
        note = comment or f"merge of #{gone.pk} into #{keep.pk}"
        written: list[int] = []
        before = keep.version
        keep = place_update(
            place=keep,
            data={field: getattr(gone, field) for field in chosen},
            user=user,
            comment=note,
            operation=ChangeOperation.MERGE,
        )
        if keep.version != before:
            written.append(_latest_seq(keep))
        # Places merged into the merged place earlier now point at the survivor (one hop).
        for earlier in Place.objects.filter(merged_into_id=gone.pk).order_by("pk"):
            place_update(
                place=earlier,
                data={"merged_into": keep},
                user=user,
                comment=note,
                operation=ChangeOperation.MERGE,
            )
            written.append(_latest_seq(earlier))
        place_update(
            place=gone,
            data={"status": PlaceStatus.MERGED, "merged_into": keep},
            user=user,
            comment=note,
            operation=ChangeOperation.MERGE,
        )
        written.append(_latest_seq(gone))
        now = timezone.now()
        candidate.status = DuplicateStatus.MERGED
        candidate.survivor = keep
        candidate.merge_changes = written
        candidate.decided_by = user
        candidate.decided_at = candidate.updated_at = now
        candidate.save()
        security_event(
            SecurityEventKind.MERGE,
            user,
            dataset=keep.dataset_id,
            survivor=keep.pk,
            merged=gone.pk,
            merged_dataset=gone.dataset_id,
            fields_taken=chosen,
            changes=written,
            candidate=candidate.pk,
        )
    return candidate


def place_merge_undo(
    *, candidate: DuplicateCandidate, user: Any, force: bool = False
) -> DuplicateCandidate:
    """Undo a merge: revert every change it wrote, newest first, in one transaction; the
    pair is open again. A later change to the same fields refuses the undo
    (``places.services.RevertConflict``, naming them) unless ``force``."""
    for dataset_id in {candidate.dataset_a_id, candidate.dataset_b_id}:
        access.require(user, Action.MERGE, dataset_id)
    with transaction.atomic():
        locked = DuplicateCandidate.objects.select_for_update().get(pk=candidate.pk)
        if locked.status != DuplicateStatus.MERGED:
            raise DuplicateDecisionError(f"Pair {locked} is not merged: there is nothing to undo.")
        changes = PlaceChange.objects.filter(seq__in=locked.merge_changes).order_by("-seq")
        undone = []
        for change in changes:
            revert = change_revert(
                change, user=user, force=force, comment=f"undo of merge (pair {locked.pk})"
            )
            if revert is not None:
                undone.append(revert.seq)
        survivor = locked.survivor_id
        locked.status = DuplicateStatus.OPEN
        locked.survivor = None
        locked.merge_changes = []
        locked.decided_by = user
        locked.decided_at = locked.updated_at = timezone.now()
        locked.save()
        security_event(
            SecurityEventKind.MERGE,
            user,
            dataset=locked.dataset_a_id,
            undone=True,
            survivor=survivor,
            places=[locked.place_a_id, locked.place_b_id],
            changes=undone,
            candidate=locked.pk,
        )
    return locked
