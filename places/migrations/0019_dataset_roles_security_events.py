"""Per-dataset roles and the security audit trail.

The role groups are made by ``ingestion.0012_role_groups`` (their permissions include
ingestion's models, and places' migrations must not depend on ingestion's). The audit trail is
append-only in the database itself, as the change log is: a trigger refuses UPDATE and DELETE
for every client.
"""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.conf import settings
from django.db import migrations, models

APPEND_ONLY = """
CREATE FUNCTION places_securityevent_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'places_securityevent is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER securityevent_append_only
    BEFORE UPDATE OR DELETE ON places_securityevent
    FOR EACH ROW EXECUTE FUNCTION places_securityevent_append_only();
-- TRUNCATE skips row triggers: refuse it with a statement trigger.
CREATE TRIGGER securityevent_no_truncate
    BEFORE TRUNCATE ON places_securityevent
    FOR EACH STATEMENT EXECUTE FUNCTION places_securityevent_append_only();
"""

DROP_APPEND_ONLY = """
DROP TRIGGER securityevent_no_truncate ON places_securityevent;
DROP TRIGGER securityevent_append_only ON places_securityevent;
DROP FUNCTION places_securityevent_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("places", "0018_placechange_reverts"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.CreateModel(
            name="DatasetRole",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "role",
                    models.CharField(
                        choices=[
                            ("viewer", "Viewer"),
                            ("contributor", "Contributor"),
                            ("curator", "Curator"),
                            ("reviewer", "Reviewer"),
                            ("importer", "Importer"),
                        ],
                        max_length=16,
                    ),
                ),
                (
                    "granted_at",
                    models.DateTimeField(
                        db_default=django.db.models.functions.datetime.Now(), editable=False
                    ),
                ),
                (
                    "dataset",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="roles",
                        to="places.dataset",
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="dataset_roles",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("user", "dataset", "role"), name="datasetrole_user_dataset_role"
                    ),
                    models.CheckConstraint(
                        condition=models.Q(
                            (
                                "role__in",
                                ["viewer", "contributor", "curator", "reviewer", "importer"],
                            )
                        ),
                        name="datasetrole_role_valid",
                    ),
                ],
            },
        ),
        migrations.CreateModel(
            name="SecurityEvent",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "at",
                    models.DateTimeField(
                        db_default=django.db.models.functions.datetime.Now(), db_index=True
                    ),
                ),
                (
                    "kind",
                    models.CharField(
                        choices=[
                            ("login", "Login"),
                            ("login_failed", "Failed login"),
                            ("locked_out", "Locked out"),
                            ("role_granted", "Role granted"),
                            ("role_revoked", "Role revoked"),
                            ("merge", "Merge"),
                            ("revert", "Revert"),
                            ("import_applied", "Import applied"),
                        ],
                        max_length=16,
                    ),
                ),
                ("username", models.CharField(blank=True, max_length=150)),
                ("ip_address", models.GenericIPAddressField(blank=True, null=True)),
                ("details", models.JSONField(blank=True, default=dict)),
                (
                    "dataset",
                    models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        null=True,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="places.dataset",
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        null=True,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["-at", "-id"],
                "indexes": [models.Index(fields=["kind", "at"], name="securityevent_kind_at")],
            },
        ),
        migrations.RunSQL(APPEND_ONLY, DROP_APPEND_ONLY),
    ]
