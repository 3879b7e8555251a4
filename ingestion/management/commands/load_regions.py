"""Load a boundary file into regions: ``manage.py load_regions FILE --preset ne-countries``.

Changed boundaries are cut into pieces again and the places inside the old and the new
boundaries are located again, each change logged (``places.services.regions_refresh``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ingestion.management.commands._dataset_options import (
    add_dataset_arguments,
    dataset_from_options,
)
from ingestion.readers import UnreadableFile
from ingestion.services.regions import PRESETS, RegionSource, region_load
from places.models import RegionLevel


class Command(BaseCommand):
    help = (
        "Load regions (countries, subdivisions, districts) from a boundary file; places inside "
        "changed boundaries get their region and country again, logged in the change log."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        add_dataset_arguments(parser)
        parser.add_argument("--preset", choices=sorted(PRESETS), help="Known file layout.")
        parser.add_argument("--level", choices=RegionLevel.values)
        parser.add_argument("--code-field")
        parser.add_argument("--name-field")
        parser.add_argument("--code-system")
        parser.add_argument("--population-field")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"no such file: {path}")
        if options["preset"]:
            source = PRESETS[options["preset"]]
        else:
            needed = ("level", "code_field", "name_field", "code_system")
            missing = [f"--{n.replace('_', '-')}" for n in needed if not options[n]]
            if missing:
                raise CommandError(f"give --preset or all of: {', '.join(missing)}")
            source = RegionSource(
                level=options["level"],
                code_field=options["code_field"],
                name_field=options["name_field"],
                code_system=options["code_system"],
                population_field=options["population_field"],
            )
        dataset = dataset_from_options(options)
        try:
            result = region_load(path=path, source=source, dataset=dataset)
        except UnreadableFile as exc:
            raise CommandError(f"{path.name}: {exc}") from None
        self.stdout.write(
            f"{path.name}: {result.read} read, {result.added} added, {result.updated} updated, "
            f"{result.unchanged} unchanged, {len(result.rejected)} rejected; "
            f"{result.places_reassigned} places re-assigned"
        )
        for line in result.rejected[:20]:
            self.stdout.write(f"  rejected {line}")
