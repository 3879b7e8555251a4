"""Routes of the OGC API under ``/ogc/`` (names prefixed ``ogc-``)."""

from django.urls import path

from places.ogc import apis

COLLECTION = "collections/<str:collection_id>"
TILESET = f"{COLLECTION}/tiles/<str:tile_matrix_set_id>"

urlpatterns = [
    path("", apis.LandingApi.as_view(), name="ogc-landing"),
    path("api", apis.ApiDefinitionApi.as_view(), name="ogc-api"),
    path("conformance", apis.ConformanceApi.as_view(), name="ogc-conformance"),
    path("collections", apis.CollectionsApi.as_view(), name="ogc-collections"),
    path(COLLECTION, apis.CollectionApi.as_view(), name="ogc-collection"),
    path(f"{COLLECTION}/queryables", apis.QueryablesApi.as_view(), name="ogc-queryables"),
    path(f"{COLLECTION}/items", apis.ItemsApi.as_view(), name="ogc-items"),
    path(f"{COLLECTION}/items/<str:feature_id>", apis.ItemApi.as_view(), name="ogc-item"),
    path(f"{COLLECTION}/tiles", apis.TilesetListApi.as_view(), name="ogc-tilesets"),
    path(TILESET, apis.TilesetApi.as_view(), name="ogc-tileset"),
    path(
        f"{TILESET}/<str:tile_matrix>/<str:tile_row>/<str:tile_col>",
        apis.TileApi.as_view(),
        name="ogc-tile",
    ),
    path("tileMatrixSets", apis.TileMatrixSetsApi.as_view(), name="ogc-tile-matrix-sets"),
    path(
        "tileMatrixSets/<str:tile_matrix_set_id>",
        apis.TileMatrixSetApi.as_view(),
        name="ogc-tile-matrix-set",
    ),
]
