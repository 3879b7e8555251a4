"""Dataset options shared by the import commands (a module, not a command: leading _)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from places.models import Dataset
from places.services import dataset_get_or_create


def add_dataset_arguments(parser: CommandParser) -> None:
    parser.add_argument("--dataset", required=True, help="Dataset slug (created if new).")
    parser.add_argument("--dataset-name", default=None, help="Name for a new dataset.")
    parser.add_argument("--licence", default="", help="Licence of a new dataset.")
    parser.add_argument("--attribution", default="", help="Attribution text of a new dataset.")
    parser.add_argument("--source-url", default="", help="Source URL of a new dataset.")


def dataset_from_options(options: dict[str, Any]) -> Dataset:
    """The dataset named by ``--dataset``; the other options describe it only when new."""
    return dataset_get_or_create(
        slug=options["dataset"],
        defaults={
            "name": options["dataset_name"] or options["dataset"],
            "licence": options["licence"],
            "attribution": options["attribution"],
            "source_url": options["source_url"],
        },
    )
