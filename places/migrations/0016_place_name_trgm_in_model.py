"""The trigram index on place names (made in SQL by 0004) declared by the model.

Django can state an index on an expression with an operator class, so the index is no
longer an object only the database knows of. State only: the index exists and is the one
Django would build, ``gin ((UPPER("name")) gin_trgm_ops)``.
"""

import django.contrib.postgres.indexes
import django.db.models.functions.text
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("places", "0015_change_log_trigger_marks_pending_versions")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddIndex(
                    model_name="place",
                    index=django.contrib.postgres.indexes.GinIndex(
                        django.contrib.postgres.indexes.OpClass(
                            django.db.models.functions.text.Upper("name"), name="gin_trgm_ops"
                        ),
                        name="place_name_trgm",
                    ),
                ),
            ],
        ),
    ]
