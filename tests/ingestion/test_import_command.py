"""The import_places management command prints what the job did (the same service runs)."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from places.models import Place

pytestmark = pytest.mark.django_db


def test_the_command_prints_the_counts_of_a_dry_run_and_of_the_import(sample_regions, tmp_path):
    path = tmp_path / "small.csv"
    path.write_text("id,name,lon,lat\nc1,One,-0.1,51.5\nc1,Again,-0.1,51.5\nc2,Two,,\n")
    printed = []
    for extra in (["--dry-run"], []):
        out = io.StringIO()
        call_command("import_places", str(path), "--dataset", "cmd", "--sync", *extra, stdout=out)
        printed.append(out.getvalue())
    dry, real = printed
    assert "running in this process" in dry
    assert "3 rows read; 1 added, 0 updated, 0 unchanged, 0 retired, 2 rejected" in dry
    assert "dry run: what an import would do; nothing was written" in dry
    assert "3 rows read; 1 added, 0 updated, 0 unchanged, 0 retired, 2 rejected" in real
    assert "dry run" not in real
    assert "row 3: duplicate_key: key c1 was already used by row 2" in real
    assert Place.objects.filter(dataset__slug="cmd").count() == 1
