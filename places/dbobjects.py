"""The database objects Django does not model, each with its current definition.

Migrations create these in SQL, and several were redefined by later migrations, so reading
the migrations gives their history, not their state. This list is their state: what each
object is, the table it works on, why it exists, and its definition as the catalog prints it
(``pg_get_functiondef``, ``pg_get_triggerdef``, ``pg_get_indexdef``; tables and sequences
as rendered by ``tests/places/test_dbobjects.py``). That test compares the list with the
catalog of a migrated database, whitespace aside: an object a migration adds, renames, drops
or redefines without changing this list fails it.

Not listed: what Django models (its tables, their indexes and constraints, sequences owned
by a column), Django's ``django_migrations``, and what extensions (PostGIS, pg_trgm) own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["function", "trigger", "table", "sequence", "index", "partition"]


@dataclass(frozen=True, kw_only=True)
class DbObject:
    """One object; ``definition`` is compared with the catalog after :func:`sql_normalise`.

    A ``partition`` entry stands for a family of tables: ``{year}`` (and ``{month}``) in its
    name and definition match any year (month), ``{next_year}`` and ``{next_month}`` the
    period after it. ``on_demand`` families are created at run time and may have no member.
    """

    name: str
    kind: Kind
    table: str
    purpose: str
    migrations: str
    definition: str
    on_demand: bool = False


def sql_normalise(sql: str) -> str:
    """SQL with every run of whitespace made one space, the form definitions are compared in."""
    return " ".join(sql.split())


_CHANGE_LOG = "places_placechange"
_PLACES = "places_place"

DB_OBJECTS: tuple[DbObject, ...] = (
    # The change log is append-only.
    DbObject(
        name="places_placechange_append_only",
        kind="function",
        table=_CHANGE_LOG,
        purpose="Refuses UPDATE and DELETE of logged changes: history, audit and the edge "
        "devices' change feed trust that a logged change never moves, for every client.",
        migrations="places 0003",
        definition="""
CREATE OR REPLACE FUNCTION public.places_placechange_append_only()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    RAISE EXCEPTION 'places_placechange is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$function$
""",
    ),
    DbObject(
        name="placechange_append_only",
        kind="trigger",
        table=_CHANGE_LOG,
        purpose="Runs places_placechange_append_only on every UPDATE or DELETE of a row.",
        migrations="places 0003",
        definition="CREATE TRIGGER placechange_append_only BEFORE DELETE OR UPDATE ON "
        "public.places_placechange FOR EACH ROW EXECUTE FUNCTION "
        "places_placechange_append_only()",
    ),
    # The security audit trail is append-only too, TRUNCATE included.
    DbObject(
        name="places_securityevent_append_only",
        kind="function",
        table="places_securityevent",
        purpose="Refuses UPDATE, DELETE and TRUNCATE of security events (logins, lockouts, "
        "role grants, merges, reverts, applied imports): an audit trail that an account with "
        "write access could edit would prove nothing.",
        migrations="places 0019",
        definition="""
CREATE OR REPLACE FUNCTION public.places_securityevent_append_only()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    RAISE EXCEPTION 'places_securityevent is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$function$
""",
    ),
    DbObject(
        name="securityevent_append_only",
        kind="trigger",
        table="places_securityevent",
        purpose="Runs places_securityevent_append_only on every UPDATE or DELETE of a row.",
        migrations="places 0019",
        definition="CREATE TRIGGER securityevent_append_only BEFORE DELETE OR UPDATE ON "
        "public.places_securityevent FOR EACH ROW EXECUTE FUNCTION "
        "places_securityevent_append_only()",
    ),
    DbObject(
        name="securityevent_no_truncate",
        kind="trigger",
        table="places_securityevent",
        purpose="TRUNCATE skips row triggers: this statement trigger refuses it.",
        migrations="places 0019",
        definition="CREATE TRIGGER securityevent_no_truncate BEFORE TRUNCATE ON "
        "public.places_securityevent FOR EACH STATEMENT EXECUTE FUNCTION "
        "places_securityevent_append_only()",
    ),
    # Data versions: the change log marks what a transaction touched; commit moves versions.
    DbObject(
        name="places_versions_mark_pending",
        kind="function",
        table=_CHANGE_LOG,
        purpose="Notes, per statement that logs changes, the (transaction, dataset) and "
        "(transaction, dataset, area cell) pairs it touched in the pending tables; the cells "
        "are those of each place's location and, for changes that are not creations, of the "
        "old location it moved from. Holds no version row, so writers never queue on one.",
        migrations="places 0009, 0010, 0011, 0013; named in 0015",
        definition="""
CREATE OR REPLACE FUNCTION public.places_versions_mark_pending()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN

    INSERT INTO places_dataversion_pending (xact, dataset_id)
    SELECT DISTINCT txid_current(), dataset_id FROM new_changes
    -- Later writes of the same transaction count up, so its own reads see each of them.
    ON CONFLICT (xact, dataset_id)
        DO UPDATE SET marks = places_dataversion_pending.marks + 1;

    INSERT INTO places_areaversion_pending (xact, dataset_id, cell)
    SELECT txid_current(), dataset_id, cell
    FROM (
        SELECT c.dataset_id, places_area_cell(p.location) AS cell
        FROM new_changes c JOIN places_place p ON p.id = c.place_id
        UNION
        SELECT c.dataset_id,
               places_area_cell(ST_GeomFromGeoJSON(c.changes -> 'location' -> 'old'))
        FROM new_changes c
        WHERE c.operation <> 'create'
          AND jsonb_typeof(c.changes -> 'location' -> 'old') = 'object'
    ) AS touched
    WHERE cell IS NOT NULL
    ON CONFLICT (xact, dataset_id, cell)
        DO UPDATE SET marks = places_areaversion_pending.marks + 1;
    RETURN NULL;
END
$function$
""",
    ),
    DbObject(
        name="placechange_versions_mark_pending",
        kind="trigger",
        table=_CHANGE_LOG,
        purpose="Runs places_versions_mark_pending once per statement that inserts changes, "
        "with the statement's rows as new_changes.",
        migrations="places 0009; named in 0015",
        definition="CREATE TRIGGER placechange_versions_mark_pending AFTER INSERT ON "
        "public.places_placechange REFERENCING NEW TABLE AS new_changes FOR EACH STATEMENT "
        "EXECUTE FUNCTION places_versions_mark_pending()",
    ),
    DbObject(
        name="places_dataversion_seq",
        kind="sequence",
        table="places_dataversion",
        purpose="One sequence for every data version, dataset and area alike: each commit "
        "gets a value no earlier commit had, so caches keyed on versions never go back.",
        migrations="places 0009",
        definition="CREATE SEQUENCE public.places_dataversion_seq AS bigint START 1 "
        "INCREMENT 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1 NO CYCLE",
    ),
    DbObject(
        name="places_dataversion_pending",
        kind="table",
        table="places_dataversion_pending",
        purpose="Datasets that open transactions changed, until their commit moves the "
        "version; places.selectors counts a transaction's own marks so it reads its writes.",
        migrations="places 0010",
        definition="CREATE TABLE public.places_dataversion_pending (xact bigint NOT NULL, "
        "dataset_id bigint NOT NULL, marks integer NOT NULL DEFAULT 1, "
        "PRIMARY KEY (xact, dataset_id))",
    ),
    DbObject(
        name="places_dataversion_commit",
        kind="function",
        table="places_dataversion_pending",
        purpose="At commit, gives the dataset a new version from places_dataversion_seq, "
        "deletes the pending mark (the version row is held only for that instant) and "
        "notifies places_data_versions (places.version_watch).",
        migrations="places 0010, 0026",
        definition="""
CREATE OR REPLACE FUNCTION public.places_dataversion_commit()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO places_dataversion (dataset_id, version, changed_at)
    VALUES (NEW.dataset_id, nextval('places_dataversion_seq'), now())
    ON CONFLICT (dataset_id) DO UPDATE
        SET version = EXCLUDED.version, changed_at = EXCLUDED.changed_at;
    DELETE FROM places_dataversion_pending WHERE xact = NEW.xact AND dataset_id = NEW.dataset_id;
    PERFORM pg_notify('places_data_versions', '');
    RETURN NULL;
END
$function$
""",
    ),
    DbObject(
        name="dataversion_pending_commit",
        kind="trigger",
        table="places_dataversion_pending",
        purpose="Defers places_dataversion_commit to the commit of the marking transaction.",
        migrations="places 0010",
        definition="CREATE CONSTRAINT TRIGGER dataversion_pending_commit AFTER INSERT ON "
        "public.places_dataversion_pending DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
        "EXECUTE FUNCTION places_dataversion_commit()",
    ),
    DbObject(
        name="places_area_cell",
        kind="function",
        table="",
        purpose="The cell (row × 256 + column of a 1.40625° grid) of a point; the same "
        "arithmetic as places.models.AREA_CELL_DEGREES and places.selectors in Python.",
        migrations="places 0011",
        definition="""
CREATE OR REPLACE FUNCTION public.places_area_cell(g geometry)
 RETURNS integer
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT least(127, greatest(0, floor((ST_Y(g) + 90) / 1.40625)))::integer * 256
         + least(255, greatest(0, floor((ST_X(g) + 180) / 1.40625)))::integer
$function$
""",
    ),
    DbObject(
        name="places_areaversion_pending",
        kind="table",
        table="places_areaversion_pending",
        purpose="Area cells that open transactions changed, until their commit moves the "
        "cells' versions.",
        migrations="places 0011",
        definition="CREATE TABLE public.places_areaversion_pending (xact bigint NOT NULL, "
        "dataset_id bigint NOT NULL, cell integer NOT NULL, marks integer NOT NULL DEFAULT 1, "
        "PRIMARY KEY (xact, dataset_id, cell))",
    ),
    DbObject(
        name="places_areaversion_commit",
        kind="function",
        table="places_areaversion_pending",
        purpose="At commit, moves all of a transaction's cells at once in (dataset, cell) "
        "order, so two committing transactions cannot deadlock on version rows; the invocation "
        "that moved cells notifies places_data_versions (places.version_watch).",
        migrations="places 0011, 0026",
        definition="""
CREATE OR REPLACE FUNCTION public.places_areaversion_commit()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    moved bigint;
BEGIN
    -- The first invocation of a transaction moves all of its cells; the rest find none.
    INSERT INTO places_areaversion (dataset_id, cell, version)
    SELECT dataset_id, cell, nextval('places_dataversion_seq')
    FROM (SELECT dataset_id, cell FROM places_areaversion_pending
          WHERE xact = NEW.xact ORDER BY dataset_id, cell) AS touched
    ON CONFLICT (dataset_id, cell) DO UPDATE SET version = EXCLUDED.version;
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved > 0 THEN
        PERFORM pg_notify('places_data_versions', '');
    END IF;
    DELETE FROM places_areaversion_pending WHERE xact = NEW.xact;
    RETURN NULL;
END
$function$
""",
    ),
    DbObject(
        name="areaversion_pending_commit",
        kind="trigger",
        table="places_areaversion_pending",
        purpose="Defers places_areaversion_commit to the commit of the marking transaction.",
        migrations="places 0011",
        definition="CREATE CONSTRAINT TRIGGER areaversion_pending_commit AFTER INSERT ON "
        "public.places_areaversion_pending DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
        "EXECUTE FUNCTION places_areaversion_commit()",
    ),
    DbObject(
        name="places_versions_notify",
        kind="function",
        table="",
        purpose="Sends NOTIFY places_data_versions, delivered at commit and once per "
        "transaction, when version rows leave otherwise than by a commit moving them "
        "(a dataset deleted, a table truncated): web processes forget the versions they "
        "remembered (places.version_watch).",
        migrations="places 0026",
        definition="""
CREATE OR REPLACE FUNCTION public.places_versions_notify()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM pg_notify('places_data_versions', '');
    RETURN NULL;
END
$function$
""",
    ),
    DbObject(
        name="dataversion_notify",
        kind="trigger",
        table="places_dataversion",
        purpose="Runs places_versions_notify once per statement that deletes dataset versions.",
        migrations="places 0026",
        definition="CREATE TRIGGER dataversion_notify AFTER DELETE OR TRUNCATE ON "
        "public.places_dataversion FOR EACH STATEMENT EXECUTE FUNCTION "
        "places_versions_notify()",
    ),
    DbObject(
        name="areaversion_notify",
        kind="trigger",
        table="places_areaversion",
        purpose="Runs places_versions_notify once per statement that deletes area versions.",
        migrations="places 0026",
        definition="CREATE TRIGGER areaversion_notify AFTER DELETE OR TRUNCATE ON "
        "public.places_areaversion FOR EACH STATEMENT EXECUTE FUNCTION "
        "places_versions_notify()",
    ),
    # Places' dataset, country and region: checked per statement instead of foreign keys.
    DbObject(
        name="places_place_references_check",
        kind="function",
        table=_PLACES,
        purpose="Does what the foreign keys on dataset_id, country_id and region_id did, "
        "once per statement on its distinct ids: locks the named rows FOR KEY SHARE, then "
        "raises foreign_key_violation naming the column if one does not exist.",
        migrations="places 0014",
        definition="""
CREATE OR REPLACE FUNCTION public.places_place_references_check()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    missing bigint;
    named_by text;
BEGIN
    PERFORM 1 FROM places_dataset d
    WHERE d.id IN (SELECT dataset_id FROM new_places) ORDER BY d.id FOR KEY SHARE;
    SELECT n.dataset_id INTO missing FROM (SELECT DISTINCT dataset_id FROM new_places) n
    WHERE NOT EXISTS (SELECT 1 FROM places_dataset d WHERE d.id = n.dataset_id) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'insert or update on table "places_place" names dataset %, '
                        'which does not exist', missing
            USING ERRCODE = 'foreign_key_violation', COLUMN = 'dataset_id';
    END IF;
    PERFORM 1 FROM places_region r
    WHERE r.id IN (SELECT region_id FROM new_places UNION SELECT country_id FROM new_places)
    ORDER BY r.id FOR KEY SHARE;
    SELECT n.id, n.col INTO missing, named_by
    FROM (SELECT DISTINCT region_id AS id, 'region_id' AS col FROM new_places
          UNION SELECT DISTINCT country_id, 'country_id' FROM new_places) n
    WHERE n.id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM places_region r WHERE r.id = n.id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'insert or update on table "places_place" names region % (%), '
                        'which does not exist', missing, named_by
            USING ERRCODE = 'foreign_key_violation', COLUMN = named_by;
    END IF;
    RETURN NULL;
END $function$
""",
    ),
    DbObject(
        name="place_references_insert",
        kind="trigger",
        table=_PLACES,
        purpose="Runs places_place_references_check once per statement that inserts places.",
        migrations="places 0014",
        definition="CREATE TRIGGER place_references_insert AFTER INSERT ON public.places_place "
        "REFERENCING NEW TABLE AS new_places FOR EACH STATEMENT EXECUTE FUNCTION "
        "places_place_references_check()",
    ),
    DbObject(
        name="place_references_update",
        kind="trigger",
        table=_PLACES,
        purpose="Runs places_place_references_check once per statement that updates places "
        "(a transition table cannot name columns, so every update is checked).",
        migrations="places 0014",
        definition="CREATE TRIGGER place_references_update AFTER UPDATE ON public.places_place "
        "REFERENCING NEW TABLE AS new_places FOR EACH STATEMENT EXECUTE FUNCTION "
        "places_place_references_check()",
    ),
    DbObject(
        name="places_region_unreferenced_check",
        kind="function",
        table="places_region",
        purpose="Refuses deleting a region that places still name as region or country "
        "(after Django's SET_NULL has run), as the foreign keys did.",
        migrations="places 0014",
        definition="""
CREATE OR REPLACE FUNCTION public.places_region_unreferenced_check()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    named bigint;
BEGIN
    SELECT o.id INTO named FROM old_regions o
    WHERE EXISTS (SELECT 1 FROM places_place p WHERE p.region_id = o.id)
       OR EXISTS (SELECT 1 FROM places_place p WHERE p.country_id = o.id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'delete on table "places_region": places still name region %', named
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $function$
""",
    ),
    DbObject(
        name="region_unreferenced",
        kind="trigger",
        table="places_region",
        purpose="Runs places_region_unreferenced_check once per statement that deletes regions.",
        migrations="places 0014",
        definition="CREATE TRIGGER region_unreferenced AFTER DELETE ON public.places_region "
        "REFERENCING OLD TABLE AS old_regions FOR EACH STATEMENT EXECUTE FUNCTION "
        "places_region_unreferenced_check()",
    ),
    DbObject(
        name="places_dataset_unreferenced_check",
        kind="function",
        table="places_dataset",
        purpose="Refuses deleting a dataset that places still belong to, as the foreign key did.",
        migrations="places 0014",
        definition="""
CREATE OR REPLACE FUNCTION public.places_dataset_unreferenced_check()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    named bigint;
BEGIN
    SELECT o.id INTO named FROM old_datasets o
    WHERE EXISTS (SELECT 1 FROM places_place p WHERE p.dataset_id = o.id) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'delete on table "places_dataset": places still belong to dataset %',
                        named
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $function$
""",
    ),
    DbObject(
        name="dataset_unreferenced",
        kind="trigger",
        table="places_dataset",
        purpose="Runs places_dataset_unreferenced_check once per statement that deletes datasets.",
        migrations="places 0014",
        definition="CREATE TRIGGER dataset_unreferenced AFTER DELETE ON public.places_dataset "
        "REFERENCING OLD TABLE AS old_datasets FOR EACH STATEMENT EXECUTE FUNCTION "
        "places_dataset_unreferenced_check()",
    ),
    # Accent-insensitive name search (the admin's): an immutable unaccent and its index.
    DbObject(
        name="places_unaccent",
        kind="function",
        table=_PLACES,
        purpose="unaccent() with its dictionary named, so IMMUTABLE: an index may use it "
        "(unaccent itself is only STABLE).",
        migrations="places 0023",
        definition="""
CREATE OR REPLACE FUNCTION public.places_unaccent(text)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE STRICT
AS $function$ SELECT public.unaccent('public.unaccent'::regdictionary, $1) $function$
""",
    ),
    DbObject(
        name="place_name_unaccent_trgm",
        kind="index",
        table=_PLACES,
        purpose="Trigrams of the upper-cased, unaccented name: the admin's name search "
        "(places.selectors.place_name_search) finds 'São Paulo' from 'Sao Paulo' by this "
        "index on a million places.",
        migrations="places 0023",
        definition="CREATE INDEX place_name_unaccent_trgm ON public.places_place USING gin "
        "(upper(places_unaccent(name)) gin_trgm_ops)",
    ),
    # Indexes Django's models do not declare.
    DbObject(
        name="places_placeattribute_dataset_id",
        kind="index",
        table="places_placeattribute",
        purpose="The dataset foreign key's index on the partitioned attribute table, made "
        "with the table in SQL; Django's state expects it under a hashed name (and finds it "
        "by its column when it needs to).",
        migrations="places 0002",
        definition="CREATE INDEX places_placeattribute_dataset_id ON ONLY "
        "public.places_placeattribute USING btree (dataset_id)",
    ),
    # Partitions of places_placeattribute (the parent is PlaceAttribute's table).
    DbObject(
        name="places_placeattribute_before_2000",
        kind="partition",
        table="places_placeattribute",
        purpose="Attributes observed before 2000.",
        migrations="places 0002",
        definition="FOR VALUES FROM (MINVALUE) TO ('2000-01-01')",
    ),
    DbObject(
        name="places_placeattribute_y{year}",
        kind="partition",
        table="places_placeattribute",
        purpose="One year of attributes: 2000 to 2028 from the migration, later years "
        "created ahead by the beat task place_attribute_partitions_ensure.",
        migrations="places 0002; places.services.place_attribute_partitions_ensure",
        definition="FOR VALUES FROM ('{year}-01-01') TO ('{next_year}-01-01')",
    ),
    DbObject(
        name="places_placeattribute_default",
        kind="partition",
        table="places_placeattribute",
        purpose="Attributes of years without a partition yet; the partition task moves them "
        "out when it creates their year.",
        migrations="places 0002",
        definition="DEFAULT",
    ),
    # Partitions of ingestion_observation (the parent is Observation's table, made in SQL).
    DbObject(
        name="ingestion_observation_y{year}m{month}",
        kind="partition",
        table="ingestion_observation",
        purpose="One month of sensor readings, created when a batch first brings a reading of "
        "that month and ahead by the beat task edge_partitions_maintain, which also drops "
        "months past EDGE_RETENTION_DAYS.",
        migrations="ingestion 0008; ingestion.edge.services.partitions",
        definition="FOR VALUES FROM ('{year}-{month}-01 00:00:00+00') "
        "TO ('{next_year}-{next_month}-01 00:00:00+00')",
        on_demand=True,
    ),
    # Import scratch space.
    DbObject(
        name="ingestion_importstage",
        kind="table",
        table="ingestion_importstage",
        purpose="Rows of running imports, keyed by (job, sid) so a resumed or redelivered run "
        "finds what was staged; UNLOGGED (scratch: no WAL for COPY; a server crash empties "
        "it and the import stages the file again). Written and read by ingestion's SQL.",
        migrations="ingestion 0006",
        definition="CREATE UNLOGGED TABLE public.ingestion_importstage (job_id bigint NOT NULL, "
        "sid bigint NOT NULL, row_number bigint NOT NULL, layer text NOT NULL, "
        "source_key text NOT NULL, denominations text[] NOT NULL, lon double precision, "
        "lat double precision, wkb bytea, srid integer NOT NULL, geom geometry(Point,4326), "
        "footprint geometry(MultiPolygon,4326), fields text NOT NULL, fingerprint text NOT NULL, "
        "raw text, reject text, reject_detail text, PRIMARY KEY (job_id, sid))",
    ),
)
