"""The curator's role group gets the permission to merge duplicates
(``places.merge_duplicatecandidate``, made by places 0022); the admin's group, which holds every
permission of places, gets it too if ingestion 0012 ran before places 0022.

Without it the admin offered merging to nobody but superusers: its merge page, undo and
"not a duplicate" ask for this permission as well as for the merge right in both datasets
(``places.access``), which curators have. Contributors, viewers, reviewers and importers do
not merge. The groups are set again from the table (``places.access.role_groups_sync``);
backwards, the permission is taken from the dataset roles' groups again.
"""

from django.db import migrations

from places.access import role_groups_sync

MERGE = {"content_type__app_label": "places", "codename": "merge_duplicatecandidate"}
# The role groups that did not hold it before; the admin's holds every permission of places.
DATASET_ROLES = ("viewer", "contributor", "curator", "reviewer", "importer")


def groups_forward(apps, schema_editor):
    role_groups_sync(apps)


def groups_backward(apps, schema_editor):
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    merge = permission_model.objects.filter(**MERGE)
    for group in group_model.objects.filter(name__in=DATASET_ROLES):
        group.permissions.remove(*merge)


class Migration(migrations.Migration):
    dependencies = [
        ("ingestion", "0012_role_groups"),
        ("places", "0022_duplicates_merge"),
    ]

    operations = [migrations.RunPython(groups_forward, groups_backward)]
