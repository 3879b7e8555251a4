"""Serving: the public read API, the viewport, the vector tiles and their caching.

Everything here only reads. Heavy answers are written by PostgreSQL as text or bytes and
cached per data version; the views validate parameters and speak HTTP.

=====================  ============================================================
module                 holds
=====================  ============================================================
``urls``               the routes (``api/v1/`` in the ``places`` namespace, tiles)
``apis``               places list and detail, regions, datasets
``viewport_apis``      the viewport endpoint
``tile_apis``          vector tiles and their TileJSON
``params``             query parameters, validated (one bbox field, one status rule)
``serializers``        representations of one place, regions and datasets
``filters``            the regions list's filters (django-filter)
``query``              ``PlaceQuery``: the filters as one SQL condition
``fields``             the place fields every output exposes (one list)
``features``           pages of places written in SQL, with their envelope
``viewport``           a map view as clusters or points, as columnar JSON or binary
``tiles``              Mapbox Vector Tiles from ``ST_AsMVT``
``responses``          byte responses: the Redis cache, ETags, data versions
=====================  ============================================================
"""
