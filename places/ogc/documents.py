"""The JSON documents of ``/ogc/`` other than features: landing page, conformance,
collections, queryables, tile matrix sets and tilesets.

Conformance classes are declared only for what the code does and the tests show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from places.ogc.collections import PLACES, Collection, Extent
from places.ogc.params import CRS84
from places.serving import tiles

Url = Callable[[str], str]  # a path under /ogc/ -> absolute URL

FEATURES_1 = "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/"
FEATURES_3 = "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/"
CQL2 = "http://www.opengis.net/spec/cql2/1.0/conf/"
COMMON_1 = "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/"
TILES_1 = "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/"
CONFORMANCE = [
    f"{COMMON_1}core",
    f"{COMMON_1}landing-page",
    f"{COMMON_1}json",
    f"{COMMON_1}html",
    f"{COMMON_1}oas30",
    f"{FEATURES_1}core",
    f"{FEATURES_1}geojson",
    f"{FEATURES_1}html",
    f"{FEATURES_1}oas30",
    # Part 3: queryables, name=value parameters, filter=, in CQL2 text.
    f"{FEATURES_3}queryables",
    f"{FEATURES_3}queryables-query-parameters",
    f"{FEATURES_3}filter",
    f"{FEATURES_3}features-filter",
    f"{CQL2}cql2-text",
    f"{CQL2}basic-cql2",
    f"{CQL2}advanced-comparison-operators",
    f"{CQL2}basic-spatial-functions",
    f"{CQL2}basic-spatial-functions-plus",
    f"{CQL2}spatial-functions",
    f"{TILES_1}core",
    f"{TILES_1}tileset",
    f"{TILES_1}tilesets-list",
    f"{TILES_1}geodata-tilesets",
    f"{TILES_1}mvt",
    f"{TILES_1}oas30",
]
GEOJSON = "application/geo+json"
JSON = "application/json"
HTML = "text/html"
MVT = "application/vnd.mapbox-vector-tile"
WEB_MERCATOR_QUAD = "WebMercatorQuad"
WEB_MERCATOR_QUAD_URI = "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
EPSG_3857 = "http://www.opengis.net/def/crs/EPSG/0/3857"


def link(href: str, rel: str, type_: str, title: str, **extra: Any) -> dict[str, Any]:
    return {"href": href, "rel": rel, "type": type_, "title": title, **extra}


def self_links(url: Url, path: str, *, json_type: str = JSON) -> list[dict[str, Any]]:
    """The document itself as JSON and as HTML (``f=``)."""
    return [
        link(url(path + "?f=json"), "self", json_type, "This document"),
        link(url(path + "?f=html"), "alternate", HTML, "This document as HTML"),
    ]


def landing(url: Url, *, schema_url: str, docs_url: str) -> dict[str, Any]:
    return {
        "title": "Places — OGC API",
        "description": (
            "Places of worship and their regions as OGC API – Features (with CQL2 filters) "
            "and OGC API – Tiles (Mapbox Vector Tiles in WebMercatorQuad)."
        ),
        "links": [
            *self_links(url, ""),
            link(
                schema_url,
                "service-desc",
                "application/vnd.oai.openapi+json;version=3.0",
                "The API definition (OpenAPI 3)",
            ),
            link(docs_url, "service-doc", HTML, "The API documentation"),
            link(url("conformance"), "conformance", JSON, "Conformance classes"),
            link(url("collections"), "data", JSON, "The collections"),
            link(
                url("tileMatrixSets"),
                "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes",
                JSON,
                "Tile matrix sets",
            ),
        ],
    }


def collection(url: Url, found: Collection, extent: Extent) -> dict[str, Any]:
    base = f"collections/{found.id}"
    return {
        "id": found.id,
        "title": found.title,
        "description": found.description,
        "itemType": "feature",
        "extent": extent.as_json(),
        "crs": [CRS84],
        "storageCrs": CRS84,
        "links": [
            *self_links(url, base),
            link(url(f"{base}/items?f=json"), "items", GEOJSON, "The features"),
            link(url(f"{base}/items?f=html"), "items", HTML, "The features as HTML"),
            link(
                url(f"{base}/queryables"),
                "http://www.opengis.net/def/rel/ogc/1.0/queryables",
                "application/schema+json",
                "Queryable properties",
            ),
        ]
        + (
            [
                link(
                    url(f"{base}/tiles"),
                    "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector",
                    JSON,
                    "Vector tilesets",
                )
            ]
            if found.has_tiles
            else []
        ),
    }


def queryables(url: Url, found: Collection) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2019-09/schema",
        "$id": url(f"collections/{found.id}/queryables"),
        "type": "object",
        "title": found.title,
        "properties": {name: q.json_schema() for name, q in found.queryables.items()},
        "additionalProperties": False,
    }


# WebMercatorQuad (OGC 17-083r4, annex D): 256-pixel tiles, the world square at zoom 0.
ORIGIN = 20037508.3427892
ZOOM0_SCALE = 559082264.028717
ZOOM0_CELL = 156543.033928041


def tile_matrix_set() -> dict[str, Any]:
    return {
        "id": WEB_MERCATOR_QUAD,
        "title": "Google Maps Compatible for the World",
        "uri": WEB_MERCATOR_QUAD_URI,
        "crs": EPSG_3857,
        "orderedAxes": ["E", "N"],
        "wellKnownScaleSet": "http://www.opengis.net/def/wkss/OGC/1.0/GoogleMapsCompatible",
        "tileMatrices": [
            {
                "id": str(z),
                "scaleDenominator": ZOOM0_SCALE / 2**z,
                "cellSize": ZOOM0_CELL / 2**z,
                "cornerOfOrigin": "topLeft",
                "pointOfOrigin": [-ORIGIN, ORIGIN],
                "tileWidth": 256,
                "tileHeight": 256,
                "matrixWidth": 2**z,
                "matrixHeight": 2**z,
            }
            for z in range(tiles.MAX_ZOOM + 1)
        ],
    }


def tile_layers(found: Collection) -> list[dict[str, Any]]:
    layers = tiles.place_vector_layers() if found.kind == PLACES else tiles.region_vector_layers()
    return [
        {
            "id": layer["id"],
            "dataType": "vector",
            "geometryDimension": 0 if found.kind == PLACES else 2,
            **({"minTileMatrix": str(layer["minzoom"])} if "minzoom" in layer else {}),
            **({"maxTileMatrix": str(layer["maxzoom"])} if "maxzoom" in layer else {}),
            "propertiesSchema": {
                "type": "object",
                "properties": {
                    name: {"type": "number" if kind == "Number" else "string"}
                    for name, kind in dict(layer["fields"]).items()  # type: ignore[call-overload]
                },
            },
        }
        for layer in layers
    ]


def tileset(url: Url, found: Collection) -> dict[str, Any]:
    base = f"collections/{found.id}/tiles/{WEB_MERCATOR_QUAD}"
    return {
        "title": f"{found.title} as vector tiles",
        "dataType": "vector",
        "crs": EPSG_3857,
        "tileMatrixSetURI": WEB_MERCATOR_QUAD_URI,
        "layers": tile_layers(found),
        "links": [
            link(url(base), "self", JSON, "This tileset"),
            link(
                url(f"tileMatrixSets/{WEB_MERCATOR_QUAD}"),
                "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme",
                JSON,
                "The tile matrix set",
            ),
            link(url(f"collections/{found.id}"), "collection", JSON, "The collection"),
            link(
                url(base) + "/{tileMatrix}/{tileRow}/{tileCol}",
                "item",
                MVT,
                "A tile",
                templated=True,
            ),
        ],
    }


def tileset_list(url: Url, found: Collection) -> dict[str, Any]:
    base = f"collections/{found.id}/tiles/{WEB_MERCATOR_QUAD}"
    return {
        "links": [link(url(f"collections/{found.id}/tiles"), "self", JSON, "Tilesets")],
        "tilesets": [
            {
                "title": f"{found.title} as vector tiles",
                "dataType": "vector",
                "crs": EPSG_3857,
                "tileMatrixSetURI": WEB_MERCATOR_QUAD_URI,
                "links": [
                    link(url(base), "self", JSON, "The tileset"),
                    link(
                        url(f"tileMatrixSets/{WEB_MERCATOR_QUAD}"),
                        "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme",
                        JSON,
                        "The tile matrix set",
                    ),
                ],
            }
        ],
    }
