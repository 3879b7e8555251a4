"""Writes of the places app: places (curators, devices) and their history (revert, restore),
duplicates and merges, regions, attribute partitions.

Callers import from here (``from places import services``); the modules are split by what
they keep.
"""

from places.services.duplicates import (
    DuplicateDecisionError,
    DuplicatesFound,
    duplicate_mark_not_duplicate,
    duplicates_find,
    duplicates_find_for_job,
)
from places.services.history import (
    HistoryError,
    RevertConflict,
    change_revert,
    place_restore,
    place_unretire,
)
from places.services.merge import MERGE_FIELDS, place_merge, place_merge_undo
from places.services.partitions import (
    ATTRIBUTE_DEFAULT_PARTITION,
    ATTRIBUTE_TABLE,
    place_attribute_partitions_ensure,
)
from places.services.places import (
    EDITABLE_FIELDS,
    PlaceVersionConflict,
    dataset_get_or_create,
    place_create,
    place_retire,
    place_update,
    places_retire,
)
from places.services.regions import (
    SUBDIVIDE_MAX_VERTICES,
    RegionsRefreshed,
    region_save,
    regions_hold_for_locating,
    regions_hold_for_writing,
    regions_refresh,
)

__all__ = [
    "ATTRIBUTE_DEFAULT_PARTITION",
    "ATTRIBUTE_TABLE",
    "EDITABLE_FIELDS",
    "MERGE_FIELDS",
    "SUBDIVIDE_MAX_VERTICES",
    "DuplicateDecisionError",
    "DuplicatesFound",
    "HistoryError",
    "PlaceVersionConflict",
    "RegionsRefreshed",
    "RevertConflict",
    "change_revert",
    "dataset_get_or_create",
    "duplicate_mark_not_duplicate",
    "duplicates_find",
    "duplicates_find_for_job",
    "place_attribute_partitions_ensure",
    "place_create",
    "place_merge",
    "place_merge_undo",
    "place_restore",
    "place_retire",
    "place_unretire",
    "place_update",
    "places_retire",
    "region_save",
    "regions_hold_for_locating",
    "regions_hold_for_writing",
    "regions_refresh",
]
