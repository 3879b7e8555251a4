from django.apps import AppConfig


class IngestionConfig(AppConfig):
    name = "ingestion"
    verbose_name = "Imports"

    def ready(self) -> None:
        # Edge-node gauges and counters, read from the database at each scrape of /metrics.
        from ingestion.edge.metrics import edge_metrics_register

        # Importing the geo reader leaves GDAL with only the drivers uploads may use, in
        # every process (web, worker, shell), before any code could open a file.
        from ingestion.readers import geo  # noqa: F401

        edge_metrics_register()
