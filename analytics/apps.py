from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    name = "analytics"
    verbose_name = "Analytics"

    def ready(self) -> None:
        # The replica's lag gauges, read from the servers at each scrape of /metrics.
        from analytics.metrics import replica_metrics_register

        replica_metrics_register()
