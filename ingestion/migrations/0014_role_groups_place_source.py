"""The admin's role group, which holds every permission of places, gets those of
``PlaceSource`` (places 0025: a place's source values, read-only in the admin). No dataset
role reads it: the import's own record, not something curators work on."""

from django.db import migrations

from places.access import role_groups_sync


def groups_forward(apps, schema_editor):
    role_groups_sync(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("ingestion", "0013_merge_permission_for_roles"),
        ("places", "0025_place_source_side_table"),
    ]

    # Backwards, places 0025 removes the model and its permissions go with it.
    operations = [migrations.RunPython(groups_forward, migrations.RunPython.noop)]
