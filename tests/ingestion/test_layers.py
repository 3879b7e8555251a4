"""Files of several layers: shapefiles wherever they sit in a zip, GeoPackages with several
tables; every layer is listed and imported unless staff (admin) or ``--layer`` choose some."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pyarrow as pa
import pyogrio
import pytest
from django.contrib.gis.geos import Point, Polygon
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from ingestion.models import ImportJob, ImportState
from ingestion.readers import UnreadableFile, open_reader
from ingestion.readers.safety import check_zip
from ingestion.services.imports import import_job_execute
from ingestion.services.inspection import import_job_inspect
from ingestion.services.jobs import import_job_create
from ingestion.tasks import import_job_run
from places.models import Place
from places.services import dataset_get_or_create

pytestmark = pytest.mark.django_db

CHAPELS = {"id": ["c1", "c2"], "name": ["North Chapel", "South Chapel"]}
TEMPLES = {"id": ["t1"], "name": ["Temple"]}


def _shapefile(folder: Path, stem: str, values: dict[str, list[str]], *, polygons: bool) -> None:
    """A small shapefile of our own: points, or squares around them, near London."""
    shapes = [
        Polygon.from_bbox((-0.1 - i / 100, 51.5, -0.09 - i / 100, 51.51))
        if polygons
        else Point(-0.1 - i / 100, 51.5)
        for i in range(len(values["id"]))
    ]
    table = pa.table({**values, "geometry": [shape.wkb.tobytes() for shape in shapes]})
    pyogrio.write_arrow(
        table,
        folder / f"{stem}.shp",
        driver="ESRI Shapefile",
        geometry_name="geometry",
        geometry_type="Polygon" if polygons else "Point",
        crs="EPSG:4326",
    )


def _zip(tmp_path: Path, layers: dict[str, dict[str, list[str]]], *, extra=()) -> Path:
    """A zip holding a shapefile at each of ``layers``' paths (``folder/stem``)."""
    built = tmp_path / "built"
    path = tmp_path / "places.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, values in layers.items():
            folder = built / member
            folder.mkdir(parents=True)
            stem = Path(member).name
            _shapefile(folder, stem, values, polygons=stem.startswith("temple"))
            for part in sorted(folder.iterdir()):
                archive.write(part, str(Path(member).parent / part.name))
        for name, data in extra:
            archive.writestr(name, data)
    return path


def _run(path: Path, slug: str, **kwargs) -> ImportJob:
    dataset = dataset_get_or_create(slug=slug)
    return import_job_execute(job_id=import_job_create(path=path, dataset=dataset, **kwargs).pk)


def _keys(slug: str) -> list[str]:
    return sorted(Place.objects.filter(dataset__slug=slug).values_list("source_key", flat=True))


def test_shapefile_in_a_folder_of_the_zip_imports(sample_regions, tmp_path):
    # given a zip of the folder a shapefile sits in, as a file manager makes it
    path = _zip(tmp_path, {"export/2024/chapels": CHAPELS})
    # when it is imported
    job = _run(path, "in-folder")
    # then its layer is named by its path in the zip and its places are imported
    assert job.state == ImportState.DONE, job.error
    assert [layer["name"] for layer in job.options["layers"]] == ["export/2024/chapels"]
    assert (job.added, job.rejected) == (2, 0)
    assert _keys("in-folder") == ["c1", "c2"]


def test_two_shapefiles_in_one_zip_are_two_layers_imported_both_by_default(
    sample_regions, tmp_path
):
    # given a zip with a point shapefile in one folder and a polygon one in another
    path = _zip(tmp_path, {"points/chapels": CHAPELS, "areas/temples": TEMPLES})
    # when it is imported with no layer named
    job = _run(path, "two-shp")
    # then both layers are listed, chosen and imported, each with its own geometry kind
    assert job.state == ImportState.DONE, job.error
    layers = {layer["name"]: layer["geometry_type"] for layer in job.options["layers"]}
    assert layers == {"points/chapels": "Point", "areas/temples": "Polygon"}
    assert job.options["chosen_layers"] == ["points/chapels", "areas/temples"]
    assert _keys("two-shp") == ["c1", "c2", "t1"]
    temple = Place.objects.get(dataset__slug="two-shp", source_key="t1")
    assert temple.footprint is not None


def test_same_shapefile_name_in_two_folders_gives_two_layers(tmp_path):
    # given two folders, one with a space and an accent in its name, each with a chapels.shp
    south = {"id": ["s1"], "name": ["S"]}
    path = _zip(tmp_path, {"north/chapels": CHAPELS, "Église du Sud/chapels": south})
    # when the file's layers are listed and read
    reader = open_reader(path)
    layers = reader.layers()
    # then each is a layer of its own, with its own features
    assert [(layer.name, layer.features) for layer in layers] == [
        ("north/chapels", 2),
        ("Église du Sud/chapels", 1),
    ]
    assert [next(reader.batches(layer.name)).columns["id"] for layer in layers] == [
        ["c1", "c2"],
        ["s1"],
    ]


def test_check_zip_lists_every_shp_and_passes_over_finder_resource_forks(tmp_path):
    # given a zip made by the macOS Finder: resource forks under __MACOSX/ beside the files
    path = _zip(
        tmp_path,
        {"a/chapels": CHAPELS, "b/c/temples": TEMPLES},
        extra=[("__MACOSX/a/._chapels.shp", b"\x00\x05\x16\x07"), ("__MACOSX/._README", b"x")],
    )
    # when it is checked, then every .shp is found wherever it sits and the forks are no layer
    assert check_zip(path) == ["a/chapels.shp", "b/c/temples.shp"]
    assert [layer.name for layer in open_reader(path).layers()] == ["a/chapels", "b/c/temples"]


def test_a_layer_that_is_not_in_the_file_is_refused_naming_the_layers(tmp_path):
    # given a zip of two shapefiles
    path = _zip(tmp_path, {"points/chapels": CHAPELS, "areas/temples": TEMPLES})
    # when a layer it does not hold is asked for, or none
    for asked in (["chapels"], []):
        with pytest.raises(UnreadableFile) as refused:
            import_job_create(path=path, dataset=dataset_get_or_create(slug="nope"), layers=asked)
        # then the refusal names the layers there are
        assert "its layers are: points/chapels, areas/temples" in str(refused.value)


def test_key_column_missing_from_a_chosen_layer_is_named(tmp_path):
    # given two layers, only one of which has the "ref" column the key template names
    path = _zip(
        tmp_path,
        {"points/chapels": {**CHAPELS, "ref": ["r1", "r2"]}, "areas/temples": TEMPLES},
    )
    dataset = dataset_get_or_create(slug="key-missing")
    # when both are imported with that key, then the layer without the column is named
    with pytest.raises(UnreadableFile, match="layer 'areas/temples' has no column ref"):
        import_job_create(path=path, dataset=dataset, mapping={"key": "{ref}"})
    # and with the layer left out the job is made
    job = import_job_create(
        path=path, dataset=dataset, mapping={"key": "{ref}"}, layers=["points/chapels"]
    )
    assert job.options["chosen_layers"] == ["points/chapels"]


def test_command_layer_option_imports_only_that_layer(sample_regions, tmp_path):
    # given a zip of two shapefiles
    path = _zip(tmp_path, {"points/chapels": CHAPELS, "areas/temples": TEMPLES})
    # when the command is told to import one layer
    out = io.StringIO()
    call_command(
        "import_places",
        str(path),
        "--dataset",
        "cmd-layer",
        "--sync",
        "--layer",
        "areas/temples",
        stdout=out,
    )
    # then only that layer's places are imported, and the output says which layers were read
    assert _keys("cmd-layer") == ["t1"]
    assert "layers: areas/temples (of points/chapels, areas/temples)" in out.getvalue()
    # and a layer the file does not hold is an error naming the file's layers
    with pytest.raises(CommandError, match="its layers are: points/chapels, areas/temples"):
        call_command("import_places", str(path), "--dataset", "cmd-layer", "--sync", "--layer", "x")


def test_command_without_layer_imports_every_layer_and_says_so(sample_regions, tmp_path):
    path = _zip(tmp_path, {"points/chapels": CHAPELS, "areas/temples": TEMPLES})
    out = io.StringIO()
    call_command("import_places", str(path), "--dataset", "cmd-all", "--sync", stdout=out)
    assert _keys("cmd-all") == ["c1", "c2", "t1"]
    assert "layers: points/chapels, areas/temples\n" in out.getvalue()


def _geopackage(tmp_path: Path) -> Path:
    """A GeoPackage with two tables of our own: chapels (points) and temples (polygons)."""
    path = tmp_path / "two.gpkg"
    for layer, values, shapes, kind in (
        ("chapels", CHAPELS, [Point(-0.1, 51.5), Point(-0.2, 51.5)], "Point"),
        ("temples", TEMPLES, [Polygon.from_bbox((-0.1, 51.5, -0.09, 51.51))], "Polygon"),
    ):
        table = pa.table({**values, "geometry": [s.wkb.tobytes() for s in shapes]})
        pyogrio.write_arrow(
            table,
            path,
            layer=layer,
            driver="GPKG",
            geometry_name="geometry",
            geometry_type=kind,
            crs="EPSG:4326",
            append=path.exists(),
        )
    return path


def _url(name: str, job: ImportJob) -> str:
    return reverse(f"admin:ingestion_importjob_{name}", args=[job.pk])


def _upload(client, path: Path) -> ImportJob:
    dataset = dataset_get_or_create(slug="admin-layers")
    response = client.post(
        reverse("admin:ingestion_importjob_add"),
        {
            "file": SimpleUploadedFile(path.name, path.read_bytes()),
            "dataset": dataset.pk,
            "mode": "upsert",
        },
    )
    assert response.status_code == 302
    return ImportJob.objects.latest("id")


def test_geopackage_with_two_layers_lists_both_with_their_columns(admin_client, tmp_path):
    # given a GeoPackage of two tables
    path = _geopackage(tmp_path)
    # when it is uploaded and inspected
    job = _upload(admin_client, path)
    # then both layers are listed, all chosen, and the page offers each, checked
    assert job.state == ImportState.INSPECTED, job.error
    assert [
        (layer["name"], layer["geometry_type"], layer["features"])
        for layer in job.inspection["layers"]
    ] == [("chapels", "Point", 2), ("temples", "Polygon", 1)]
    assert job.inspection["layers"][0]["columns"] == ["id", "name"]
    assert job.options["chosen_layers"] == ["chapels", "temples"]
    html = admin_client.get(_url("change", job)).content.decode()
    for name in ("chapels", "temples"):
        assert f'name="layers" value="{name}"' in html
        assert f'value="{name}" id="id_layers_{0 if name == "chapels" else 1}" checked' in html


def test_admin_choosing_one_layer_imports_only_it(
    admin_client, sample_regions, tmp_path, django_capture_on_commit_callbacks
):
    # given an inspected zip of two shapefiles
    job = _upload(
        admin_client, _zip(tmp_path, {"points/chapels": CHAPELS, "areas/temples": TEMPLES})
    )
    assert job.rows_total == 3
    # when staff keep only the point layer on the mapping form
    mapping = {"mode": "upsert", "key": "{id}", "name": "name", "layers": ["points/chapels"]}
    assert admin_client.post(_url("change", job), mapping).status_code == 302
    job.refresh_from_db()
    assert job.options["chosen_layers"] == ["points/chapels"]
    assert job.rows_total == 2
    html = admin_client.get(_url("change", job)).content.decode()
    assert '<td class="layer-imported">no</td>' in html
    # and dry-run and apply it
    for step in ("dry_run", "apply"):
        with django_capture_on_commit_callbacks(execute=False):
            assert admin_client.post(_url(step, job)).status_code == 302
        import_job_run(job.pk)
        job.refresh_from_db()
    # then only that layer's places were imported
    assert job.state == ImportState.DONE, job.error
    assert (job.rows_read, job.added) == (2, 2)
    assert _keys("admin-layers") == ["c1", "c2"]


def test_admin_refuses_choosing_no_layer(admin_client, tmp_path):
    # given an inspected GeoPackage of two tables
    job = _upload(admin_client, _geopackage(tmp_path))
    # when the form is sent with no layer checked
    response = admin_client.post(_url("change", job), {"mode": "upsert", "key": "{id}"})
    # then it is shown again with the error on the layers, and nothing changes
    assert response.status_code == 200
    assert "layers" in response.context["mapping_form"].errors
    job.refresh_from_db()
    assert job.options["chosen_layers"] == ["chapels", "temples"]


def test_a_snapshot_of_some_layers_is_refused_as_it_would_retire_the_others(tmp_path):
    # given a zip of two shapefiles
    path = _zip(tmp_path, {"points/chapels": CHAPELS, "areas/temples": TEMPLES})
    dataset = dataset_get_or_create(slug="snapshot-layers")
    layers = [layer.name for layer in open_reader(path, "shapefile").layers()]
    # when a snapshot of one layer is asked for, it is refused with the reason
    with pytest.raises(UnreadableFile, match="a snapshot needs every layer"):
        import_job_create(path=path, dataset=dataset, mode="snapshot", layers=layers[:1])
    # and a snapshot of every layer, or an upsert of one, is accepted
    assert import_job_create(path=path, dataset=dataset, mode="snapshot").pk
    assert import_job_create(path=path, dataset=dataset, mode="upsert", layers=layers[:1]).pk


def test_ids_numbered_per_layer_are_keyed_with_their_layer_and_match_again_on_reimport(
    sample_regions, tmp_path
):
    # given two shapefiles in one zip, each numbering its rows from 1 (as GIS tools do)
    chapels = {"id": ["1", "2", "3"], "name": ["North Chapel", "South Chapel", "East Chapel"]}
    temples = {"id": ["1", "2", "3"], "name": ["Temple A", "Temple B", "Temple C"]}
    path = _zip(tmp_path, {"x/chapels": chapels, "y/temples": temples})
    dataset = dataset_get_or_create(slug="per-layer-ids")

    # when it is inspected (staff reviewing before the import)
    job = import_job_inspect(
        job=import_job_create(path=path, dataset=dataset, wait_for_review=True)
    )

    # then the key made unique by its layer is proposed, and the note says why
    assert job.inspection["proposed_mapping"]["key"] == "{_layer}:{id}"
    assert job.options["mapping"]["key"] == "{_layer}:{id}"
    assert "unique within each layer" in job.inspection["key_note"]
    assert "3 of the first 6 rows" in job.inspection["key_note"]

    # when the file is imported straight away, and then once more as a snapshot
    first = _run(path, "per-layer-ids")
    again = _run(path, "per-layer-ids", mode="snapshot")

    # then every row of both layers is a place, none rejected as a duplicate, and the
    # re-import matches each of them instead of retiring and adding
    assert (first.added, first.rejected) == (6, 0)
    assert (again.added, again.retired, again.rejected) == (0, 0, 0)
    keys = _keys("per-layer-ids")
    assert len(keys) == 6
    assert {key.split(":")[1] for key in keys} == {"1", "2", "3"}
    assert len({key.split(":")[0] for key in keys}) == 2


def test_ids_unique_across_layers_stay_the_plain_key(tmp_path):
    # given two layers whose ids never meet
    path = _zip(tmp_path, {"chapels": CHAPELS, "temples": TEMPLES})
    dataset = dataset_get_or_create(slug="unique-layer-ids")

    # when a job is made for it
    job = import_job_create(path=path, dataset=dataset)

    # then the id column alone is the key
    assert job.options["mapping"]["key"] == "{id}"
