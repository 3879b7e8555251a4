// The offline basemap (Natural Earth, built by bin/build-basemap) and the text images the map
// draws its labels with. MapLibre draws text from glyph files we do not ship; a label here is
// an image drawn once with the browser's own fonts (on "styleimagemissing"), so nothing is
// fetched from another server and every script the system fonts cover is shown.
(function () {
  "use strict";

  const WATER = "#c6dbea";
  const LAND = "#f5f2ea";
  const RIVER = "#8fb4d3";

  const EMPTY = { type: "FeatureCollection", features: [] };

  // Sources and layers of the basemap, under whatever the page draws on top. The sources
  // start empty: loadAfter() fills them once the page's own data is drawn, so that the
  // worker cuts the places' tiles first (the land is two megabytes of GeoJSON to index).
  function style(urls) {
    return {
      urls: urls,
      sources: {
        land: { type: "geojson", data: EMPTY, attribution: "Made with Natural Earth", maxzoom: 10, tolerance: 0.5 },
        borders: { type: "geojson", data: EMPTY, maxzoom: 10, tolerance: 0.5 },
        water: { type: "geojson", data: EMPTY, maxzoom: 10, tolerance: 0.5 },
        towns: { type: "geojson", data: EMPTY, maxzoom: 10 },
      },
      layers: [
        { id: "water", type: "background", paint: { "background-color": WATER } },
        { id: "land", type: "fill", source: "land", paint: { "fill-color": LAND } },
        // Lakes in the sea's colour over the land, outlined like the coast; rivers above them,
        // thin when zoomed out and wider as the map comes closer.
        { id: "lakes", type: "fill", source: "water", filter: ["==", ["get", "kind"], "lake"],
          paint: { "fill-color": WATER, "fill-outline-color": "#7c9cb5" } },
        { id: "rivers", type: "line", source: "water", filter: ["==", ["get", "kind"], "river"],
          layout: { "line-join": "round", "line-cap": "round" },
          paint: { "line-color": RIVER, "line-width": ["interpolate", ["linear"], ["zoom"], 2, 0.5, 6, 1.2, 12, 3] } },
        { id: "coast", type: "line", source: "land",
          paint: { "line-color": "#7c9cb5", "line-width": ["interpolate", ["linear"], ["zoom"], 2, 0.5, 10, 1.5] } },
        { id: "borders", type: "line", source: "borders",
          paint: { "line-color": "#8d8273", "line-dasharray": [3, 2],
                   "line-width": ["interpolate", ["linear"], ["zoom"], 2, 0.5, 10, 1.2] } },
      ],
      // Town names go above the places so that they stay readable; added after them.
      labels: [0, 3, 5].map((minzoom, i) => ({
        id: "town-labels-" + i, type: "symbol", source: "towns", minzoom: minzoom,
        filter: ["all", [">=", ["get", "rank"], [0, 3, 5][i]], ["<", ["get", "rank"], [3, 5, 11][i]]],
        layout: {
          "icon-image": ["concat", "label:", ["get", "name"]],
          "icon-anchor": "bottom", "icon-offset": [0, -2],
          "symbol-sort-key": ["-", 0, ["get", "population"]],
          "icon-padding": 2,
        },
      })),
    };
  }

  // Draws "label:<text>" (a town's name) and "count:<text>" (a cluster's count) on demand.
  function drawText(map) {
    const ratio = Math.min(window.devicePixelRatio || 1, 2);
    map.on("styleimagemissing", (event) => {
      const id = event.id;
      const colon = id.indexOf(":");
      if (colon < 0) return;
      const kind = id.slice(0, colon);
      const text = id.slice(colon + 1);
      if (kind !== "label" && kind !== "count") return;
      const size = kind === "count" ? 11 : 12;
      const font = (kind === "count" ? "700 " : "500 ") + size * ratio + "px system-ui, 'DejaVu Sans', sans-serif";
      const canvas = document.createElement("canvas");
      const context = canvas.getContext("2d");
      context.font = font;
      const halo = 2 * ratio;
      const width = Math.ceil(context.measureText(text).width + 2 * halo) || 1;
      const height = Math.ceil(size * ratio * 1.3 + 2 * halo);
      canvas.width = width;
      canvas.height = height;
      context.font = font;
      context.textBaseline = "middle";
      context.lineJoin = "round";
      context.lineWidth = halo * 2;
      // Cluster counts: white on a dark halo (readable on every religion's colour);
      // town names: dark grey on a light halo, contrast above WCAG AA on land and water.
      context.strokeStyle = kind === "count" ? "rgba(20, 20, 20, 0.85)" : "rgba(255, 255, 255, 0.9)";
      context.fillStyle = kind === "count" ? "#ffffff" : "#333333";
      context.strokeText(text, halo, height / 2);
      context.fillText(text, halo, height / 2);
      if (!map.hasImage(id)) {
        map.addImage(id, context.getImageData(0, 0, width, height), { pixelRatio: ratio });
      }
    });
  }

  // Fills the basemap once the source ``first`` has loaded (or failed), or at once without it.
  function loadAfter(map, first, urls) {
    let done = false;
    const fill = () => {
      if (done) return;
      done = true;
      ["land", "borders", "water", "towns"].forEach((id) => {
        if (map.getSource(id) && urls[id]) map.getSource(id).setData(urls[id]);
      });
    };
    map.on("sourcedata", (event) => { if (event.sourceId === first && event.isSourceLoaded) fill(); });
    map.on("error", fill);
    map.once("idle", fill);
  }

  // A small map of the places (the vector tiles, drawn as ``placesLayer``) on the basemap:
  // MAP_STYLE_URL's style when one is set, else the offline files (filled after the places).
  // The place page and the admin's location widget use it; /map/ builds its own.
  function placesMap(config, placesLayer, options) {
    const basemap = style(config.basemap);
    const source = { type: "vector", url: "/tiles/places.json" };
    const offline = !config.styleUrl;
    const map = new maplibregl.Map({
      ...options,
      maxZoom: 18,
      cooperativeGestures: true,
      style: offline
        ? { version: 8, sources: { ...basemap.sources, places: source },
            layers: [...basemap.layers, placesLayer, ...basemap.labels] }
        : config.styleUrl,
    });
    if (!offline) {
      map.once("style.load", () => { map.addSource("places", source); map.addLayer(placesLayer); });
    }
    drawText(map);
    if (offline) loadAfter(map, "places", config.basemap);
    map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");
    return map;
  }

  window.PlacesBasemap = { style: style, drawText: drawText, loadAfter: loadAfter, placesMap: placesMap };
})();
