// A place's page: a small map of the place and the places around it (the page's facts are in
// the HTML; without JavaScript only this map is missing).
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("place-config").textContent);
  const basemap = window.PlacesBasemap.style(config.basemap);
  const places = {
    id: "places", type: "circle", source: "places", "source-layer": "places",
    paint: {
      "circle-color": ["case", ["==", ["id"], config.id], "#b3261e", "#0072B2"],
      "circle-radius": ["case", ["==", ["id"], config.id], 8, 5],
      "circle-stroke-color": "#1a1a1a", "circle-stroke-width": 1,
    },
  };
  const source = { type: "vector", url: "/tiles/places.json" };
  const offline = !config.styleUrl;
  const map = new maplibregl.Map({
    container: "place-map",
    center: [config.lon, config.lat],
    zoom: 15,
    maxZoom: 18,
    cooperativeGestures: true,
    style: offline
      ? { version: 8, sources: { ...basemap.sources, places: source },
          layers: [...basemap.layers, places, ...basemap.labels] }
      : config.styleUrl,
  });
  if (!offline) {
    map.once("style.load", () => { map.addSource("places", source); map.addLayer(places); });
  }
  window.PlacesBasemap.drawText(map);
  if (offline) window.PlacesBasemap.loadAfter(map, "places", config.basemap);
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");
  new maplibregl.Marker({ color: "#b3261e" }).setLngLat([config.lon, config.lat]).addTo(map);
  map.on("click", "places", (event) => {
    const id = event.features[0].id;
    if (id !== config.id) window.location.href = "/places/" + id + "/";
  });
  map.on("mouseenter", "places", () => { map.getCanvas().style.cursor = "pointer"; });
  map.on("mouseleave", "places", () => { map.getCanvas().style.cursor = ""; });
  window.placesMap = map;
})();
