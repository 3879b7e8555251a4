from django.apps import AppConfig


class IngestionConfig(AppConfig):
    name = "ingestion"
    verbose_name = "Imports"

    def ready(self) -> None:
        from ingestion.edge.metrics import edge_metrics_register
        from ingestion.readers.drivers import lock_down

        # GDAL keeps only the drivers uploads may use, in every process (web, worker,
        # shell), before any code could open a file; pyogrio itself is imported only where
        # a geo file is read (ingestion.readers.drivers says why).
        lock_down()
        # Edge-node gauges and counters, read from the database at each scrape of /metrics.
        edge_metrics_register()
