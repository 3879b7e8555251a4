"""Every PostgreSQL advisory lock id the project takes, in one enumeration.

Advisory locks share one key space per database: two features that picked the same number
would block each other without either knowing. Ids are four ASCII letters packed into an
int (readable in ``pg_locks.classid``); two-key locks use the id as the class and a row id
as the object.
"""

from __future__ import annotations

from enum import IntEnum


class AdvisoryLock(IntEnum):
    # One import run at a time per dataset (key: dataset id).
    IMPORT_DATASET = 0x494D5054  # "IMPT"
    # One run at a time per import job (key: job id).
    IMPORT_JOB = 0x494D504A  # "IMPJ"
    # One fetch of a dataset's sync URL at a time (key: dataset id).
    DATASET_SYNC = 0x53594E43  # "SYNC"
    # One maintainer of the place attribute partitions at a time (single key).
    ATTRIBUTE_PARTITIONS = 0x504C4131  # "PLA1"
    # Region maintenance (exclusive) against curator edits that run point in polygon
    # (shared): a place is never located against pieces that are being replaced.
    REGIONS = 0x5245474E  # "REGN"
    # Creating or dropping one month's partition of the edge readings table (key: yyyymm).
    EDGE_PARTITION = 0x45444750  # "EDGP"
    # One analytics recompute at a time (single key).
    ANALYTICS = 0x414E4C59  # "ANLY"
    # One search for duplicates at a time (single key).
    DUPLICATES = 0x44555053  # "DUPS"
