"""places.dbobjects lists exactly what the migrated database holds beyond Django's models."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.apps import apps
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from ingestion.edge.services.partitions import observation_partitions_ensure_months
from places.dbobjects import DB_OBJECTS, DbObject, Kind, sql_normalise

pytestmark = pytest.mark.django_db

# Objects an extension owns (PostGIS, pg_trgm) are its own business.
NOT_FROM_EXTENSION = """NOT EXISTS (
    SELECT 1 FROM pg_depend d
    WHERE d.classid = '{catalog}'::regclass AND d.objid = {oid} AND d.deptype = 'e')"""

FUNCTIONS = f"""
SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
WHERE p.pronamespace = 'public'::regnamespace
  AND {NOT_FROM_EXTENSION.format(catalog="pg_proc", oid="p.oid")}"""

TRIGGERS = """
SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger
WHERE NOT tgisinternal AND tgrelid IN (SELECT oid FROM pg_class
                                       WHERE relnamespace = 'public'::regnamespace)"""

# Tables and sequences that are no partition and belong to no column (identity, serial,
# OWNED BY) or extension.
RELATIONS = f"""
SELECT c.oid, c.relname, c.relkind FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'S', 'u', 'v', 'm')
  AND NOT c.relispartition
  AND {NOT_FROM_EXTENSION.format(catalog="pg_class", oid="c.oid")}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype IN ('a', 'i'))"""

COLUMNS = """
SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
       || COALESCE(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"""

CONSTRAINTS = """
SELECT pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = %s AND contype <> 't' ORDER BY contype, conname"""

SEQUENCE = """
SELECT format('AS %%s START %%s INCREMENT %%s MINVALUE %%s MAXVALUE %%s CACHE %%s %%s',
              format_type(seqtypid, NULL), seqstart, seqincrement, seqmin, seqmax, seqcache,
              CASE WHEN seqcycle THEN 'CYCLE' ELSE 'NO CYCLE' END)
FROM pg_sequence WHERE seqrelid = %s"""

# Indexes on tables (not partitions), except primary keys and those backing a constraint.
INDEXES = """
SELECT i.relname, t.relname, pg_get_indexdef(i.oid) FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
WHERE t.relnamespace = 'public'::regnamespace AND NOT t.relispartition AND NOT x.indisprimary
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid)"""

PARTITIONS = """
SELECT c.relname, p.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits h
JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_class p ON p.oid = h.inhparent
WHERE c.relkind IN ('r', 'p') AND c.relnamespace = 'public'::regnamespace"""


def _rows(sql: str, params: list[object] | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _model_tables() -> set[str]:
    tables = {m._meta.db_table for m in apps.get_models(include_auto_created=True)}
    return tables | {MigrationRecorder.Migration._meta.db_table}


def _model_index_names() -> set[str]:
    """Every index name Django's model state builds (Meta.indexes and db_index fields)."""
    names: set[str] = set()
    with connection.schema_editor(collect_sql=True) as editor:
        for model in apps.get_models(include_auto_created=True):
            names |= {str(s.parts["name"]).strip('"') for s in editor._model_indexes_sql(model)}
    return names


def _table_definition(oid: int, name: str, kind: str, persistence: str) -> str:
    parts = [r[0] for r in _rows(COLUMNS, [oid])] + [r[0] for r in _rows(CONSTRAINTS, [oid])]
    unlogged = "UNLOGGED " if persistence == "u" else ""
    partitioned = " PARTITIONED" if kind == "p" else ""
    return f"CREATE {unlogged}TABLE public.{name} ({', '.join(parts)}){partitioned}"


def _catalog() -> dict[tuple[Kind, str], str]:
    """What the database holds beyond Django's models: (kind, name) -> definition."""
    found: dict[tuple[Kind, str], str] = {}
    for name, definition in _rows(FUNCTIONS):
        found["function", name] = definition
    for name, definition in _rows(TRIGGERS):
        found["trigger", name] = definition
    model_tables = _model_tables()
    for oid, name, kind in _rows(RELATIONS):
        if kind == "S":
            found["sequence", name] = (
                f"CREATE SEQUENCE public.{name} {_rows(SEQUENCE, [oid])[0][0]}"
            )
        elif name not in model_tables:
            (persistence,) = _rows("SELECT relpersistence FROM pg_class WHERE oid = %s", [oid])[0]
            found["table", name] = _table_definition(oid, name, kind, persistence)
    model_indexes = _model_index_names()
    for name, table, definition in _rows(INDEXES):
        if table in model_tables and name not in model_indexes:
            found["index", name] = definition
    for name, parent, bound in _rows(PARTITIONS):
        found["partition", name] = f"{parent}: {bound}"
    return found


def _listed(obj: DbObject) -> tuple[re.Pattern[str], str]:
    """The names an entry stands for, and its definition in the catalog's form."""
    name = re.escape(obj.name).replace(r"\{year\}", r"(?P<year>\d{4})")
    name = name.replace(r"\{month\}", r"(?P<month>\d{2})")
    definition = sql_normalise(obj.definition)
    if obj.kind == "partition":
        definition = f"{obj.table}: {definition}"
    return re.compile(name + "$"), definition


def _match(kind: Kind, name: str) -> tuple[DbObject, str] | None:
    for obj in DB_OBJECTS:
        pattern, definition = _listed(obj)
        found = pattern.match(name)
        if obj.kind == kind and found:
            if "month" in pattern.groupindex:
                year, month = int(found["year"]), int(found["month"])
                after = (year + month // 12, month % 12 + 1)
                definition = definition.replace("{next_year}", f"{after[0]:04d}")
                definition = definition.replace("{next_month}", f"{after[1]:02d}")
                definition = definition.replace("{year}", f"{year:04d}")
                definition = definition.replace("{month}", f"{month:02d}")
            elif "year" in pattern.groupindex:
                year = int(found["year"])
                definition = definition.replace("{year}", str(year))
                definition = definition.replace("{next_year}", str(year + 1))
            return obj, definition
    return None


def _differences(catalog: dict[tuple[Kind, str], str]) -> tuple[list[str], list[str]]:
    """Objects of the catalog the list lacks, and those whose definitions differ."""
    unlisted = sorted(f"{kind} {name}" for kind, name in catalog if not _match(kind, name))
    changed = sorted(
        f"{kind} {name}:\n  catalog: {sql_normalise(definition)}\n  listed:  {match[1]}"
        for (kind, name), definition in catalog.items()
        if (match := _match(kind, name)) and sql_normalise(definition) != match[1]
    )
    return unlisted, changed


def test_every_object_the_catalog_holds_is_listed_with_its_definition():
    # given a database built by the migrations
    catalog = _catalog()

    # when each object is looked up in the list
    unlisted, changed = _differences(catalog)

    # then none is missing from places.dbobjects, and none has moved on without it
    assert not unlisted, f"add to places.dbobjects: {unlisted}"
    assert not changed, "update places.dbobjects:\n" + "\n".join(changed)


def test_every_listed_object_exists():
    # given the catalog
    catalog = _catalog()

    # when the list is checked against it
    missing = [
        f"{obj.kind} {obj.name}"
        for obj in DB_OBJECTS
        if not obj.on_demand
        and not any(k == obj.kind and _listed(obj)[0].match(n) for k, n in catalog)
    ]

    # then nothing listed is gone (renamed or dropped by a migration)
    assert not missing, f"remove from places.dbobjects or restore: {missing}"


def test_an_unlisted_or_redefined_object_is_reported():
    # given a migration that adds a function, a trigger and a table, and redefines a function
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION places_stray() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN NULL; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER place_stray AFTER INSERT ON places_place "
            "FOR EACH STATEMENT EXECUTE FUNCTION places_stray()"
        )
        cursor.execute("CREATE TABLE places_stray (id bigint)")
        cursor.execute(
            "CREATE OR REPLACE FUNCTION places_area_cell(g geometry) RETURNS integer "
            "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 0 $$"
        )

    # when the catalog is compared with the list
    unlisted, changed = _differences(_catalog())

    # then each is reported
    assert unlisted == ["function places_stray", "table places_stray", "trigger place_stray"]
    assert [line.split(":")[0] for line in changed] == ["function places_area_cell"]


def test_yearly_partitions_cover_every_year_of_the_migration():
    # given the partitions of the attribute table
    years = {
        int(m["year"])
        for kind, name in _catalog()
        if kind == "partition" and (m := re.search(r"_y(?P<year>\d{4})$", name))
    }

    # then every year the migration created is there
    assert set(range(2000, 2029)) <= years


def test_the_change_log_trigger_is_named_for_marking_pending_versions():
    # given the catalog as the migrations left it
    catalog = _catalog()

    # then the statement trigger and its function carry the names of what they do since 0010
    assert ("trigger", "placechange_versions_mark_pending") in catalog
    assert ("function", "places_versions_mark_pending") in catalog
    assert ("trigger", "placechange_bump_data_version") not in catalog
    assert ("function", "places_dataversion_bump") not in catalog


def test_monthly_reading_partitions_made_at_run_time_are_listed_with_their_bounds():
    # given reading partitions the batch service creates on demand, one of them a December
    observation_partitions_ensure_months(months=[dt.date(2030, 12, 1), dt.date(2031, 1, 1)])

    # when the catalog is compared with the list
    catalog = _catalog()
    unlisted, changed = _differences(catalog)

    # then both months are known, each bound ending where the next month starts
    assert ("partition", "ingestion_observation_y2030m12") in catalog
    assert ("partition", "ingestion_observation_y2031m01") in catalog
    assert not unlisted
    assert not changed
