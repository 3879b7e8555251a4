from django.apps import AppConfig


class IngestionConfig(AppConfig):
    name = "ingestion"
    verbose_name = "Imports"

    def ready(self) -> None:
        # Importing the geo reader leaves GDAL with only the drivers uploads may use, in
        # every process (web, worker, shell), before any code could open a file.
        from ingestion.readers import geo  # noqa: F401
