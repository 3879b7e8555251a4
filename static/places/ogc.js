// The OGC API's HTML pages: the page's features on the offline basemap, fitted to them.
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("ogc-config").textContent);
  const basemap = window.PlacesBasemap.style(config.basemap);
  const data = config.features || { type: "FeatureCollection", features: [] };
  const layers = [
    { id: "areas", type: "fill", source: "features", filter: ["==", ["geometry-type"], "Polygon"],
      paint: { "fill-color": "#0072B2", "fill-opacity": 0.2, "fill-outline-color": "#0072B2" } },
    { id: "points", type: "circle", source: "features", filter: ["==", ["geometry-type"], "Point"],
      paint: { "circle-color": "#0072B2", "circle-radius": 5,
               "circle-stroke-color": "#1a1a1a", "circle-stroke-width": 1 } },
  ];
  const map = new maplibregl.Map({
    container: "ogc-map",
    center: [0, 20],
    zoom: 1,
    cooperativeGestures: true,
    style: { version: 8, sources: { ...basemap.sources, features: { type: "geojson", data: data } },
             layers: [...basemap.layers, ...layers, ...basemap.labels] },
  });
  window.PlacesBasemap.drawText(map);
  window.PlacesBasemap.loadAfter(map, "features", config.basemap);
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");
  // Fit the page's features (or the collection's extent when there are none).
  let box = null;
  const extend = (c) => {
    if (typeof c[0] === "number") {
      box = box ? [Math.min(box[0], c[0]), Math.min(box[1], c[1]), Math.max(box[2], c[0]), Math.max(box[3], c[1])]
                : [c[0], c[1], c[0], c[1]];
    } else c.forEach(extend);
  };
  data.features.forEach((f) => f.geometry && extend(f.geometry.coordinates));
  box = box || config.bbox;
  if (box) map.fitBounds([[box[0], box[1]], [box[2], box[3]]], { padding: 40, maxZoom: 15, animate: false });
  window.ogcMap = map;
})();
