"""The role groups (viewer, contributor, curator, reviewer, importer, admin) with their model
permissions (``places.access.role_groups_sync``, idempotent: a later change of the table ships
with a migration calling it again).

It lives in ingestion because the importer's and admin's groups take permissions of
ingestion's models as well as places'; ingestion builds on places, never the other way round.
"""

from django.db import migrations

from places.access import role_groups_sync


def groups_forward(apps, schema_editor):
    role_groups_sync(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("ingestion", "0011_edge_node_batches_stored"),
        ("places", "0019_dataset_roles_security_events"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    # Groups stay on the way back: they may have members by then.
    operations = [migrations.RunPython(groups_forward, migrations.RunPython.noop)]
