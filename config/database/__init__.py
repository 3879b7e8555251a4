"""The database backend every connection uses: PostGIS with django-prometheus's query metrics
and a health check that costs no round trip (``config.database.base``)."""
