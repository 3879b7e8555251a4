"""PlaceAttribute as a table partitioned by observed_on (yearly ranges plus a default).

Django cannot declare a partitioned table, so the database side is SQL and the model state
is declared separately. PostgreSQL requires the partition key in the primary key, so the
real key is (id, observed_on); ids come from one sequence and stay unique on their own.
Later years are created ahead of time by the beat task ``place_attribute_partitions_ensure``.
"""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.db import migrations, models

FIRST_YEAR = 2000
LAST_YEAR = 2028

CREATE = f"""
CREATE SEQUENCE places_placeattribute_id_seq;
CREATE TABLE places_placeattribute (
    id bigint NOT NULL DEFAULT nextval('places_placeattribute_id_seq'),
    key varchar(64) NOT NULL,
    value_num double precision NULL,
    value_text text NOT NULL,
    unit varchar(32) NOT NULL,
    observed_on date NOT NULL,
    source varchar(200) NOT NULL,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    dataset_id bigint NULL
        REFERENCES places_dataset (id) DEFERRABLE INITIALLY DEFERRED,
    place_id bigint NOT NULL
        REFERENCES places_place (id) DEFERRABLE INITIALLY DEFERRED,
    PRIMARY KEY (id, observed_on)
) PARTITION BY RANGE (observed_on);
ALTER SEQUENCE places_placeattribute_id_seq OWNED BY places_placeattribute.id;
CREATE INDEX attr_place_key ON places_placeattribute (place_id, key, observed_on);
CREATE INDEX places_placeattribute_dataset_id ON places_placeattribute (dataset_id);
CREATE TABLE places_placeattribute_before_{FIRST_YEAR} PARTITION OF places_placeattribute
    FOR VALUES FROM (MINVALUE) TO ('{FIRST_YEAR}-01-01');
""" + "".join(
    f"CREATE TABLE places_placeattribute_y{y} PARTITION OF places_placeattribute "
    f"FOR VALUES FROM ('{y}-01-01') TO ('{y + 1}-01-01');\n"
    for y in range(FIRST_YEAR, LAST_YEAR + 1)
) + """
CREATE TABLE places_placeattribute_default PARTITION OF places_placeattribute DEFAULT;
"""

DROP = "DROP TABLE places_placeattribute; "


class Migration(migrations.Migration):
    dependencies = [("places", "0001_initial")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(CREATE, DROP)],
            state_operations=[
                migrations.CreateModel(
                    name="PlaceAttribute",
                    fields=[
                        ("id", models.BigAutoField(primary_key=True, serialize=False)),
                        ("key", models.CharField(help_text="What is measured, e.g. attendance.", max_length=64)),
                        ("value_num", models.FloatField(blank=True, null=True)),
                        ("value_text", models.TextField(blank=True)),
                        ("unit", models.CharField(blank=True, max_length=32)),
                        ("observed_on", models.DateField(help_text="The date the fact refers to.")),
                        ("source", models.CharField(blank=True, max_length=200)),
                        ("created_at", models.DateTimeField(db_default=django.db.models.functions.datetime.Now(), editable=False)),
                        ("dataset", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, to="places.dataset")),
                        ("place", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="attributes", to="places.place")),
                    ],
                    options={
                        "indexes": [models.Index(fields=["place", "key", "observed_on"], name="attr_place_key")],
                    },
                ),
            ],
        ),
    ]
