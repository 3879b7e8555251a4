"""Edge nodes: field devices that push sensor readings and pull their region's places.

Readings are ingested data, so this lives with ingestion, in modules of its own:
``models`` (nodes, keys, sensors, parameters, batches, observations), ``services`` (writes),
``selectors`` (reads, the change feed for devices), ``apis``/``urls`` (``/api/v1/edge/``),
``auth`` (device keys), ``tasks`` (the ``edge`` queue), ``sensor_map`` (the public map's
layer of latest PM2.5 readings, ``/api/v1/sensors/latest/``).
"""
