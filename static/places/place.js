// A place's page: a small map of the place and the places around it (the page's facts are in
// the HTML; without JavaScript only this map is missing).
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("place-config").textContent);
  const places = {
    id: "places", type: "circle", source: "places", "source-layer": "places",
    paint: {
      "circle-color": ["case", ["==", ["id"], config.id], "#b3261e", "#0072B2"],
      "circle-radius": ["case", ["==", ["id"], config.id], 8, 5],
      "circle-stroke-color": "#1a1a1a", "circle-stroke-width": 1,
    },
  };
  const map = window.PlacesBasemap.placesMap(config, places, {
    container: "place-map", center: [config.lon, config.lat], zoom: 15,
  });
  new maplibregl.Marker({ color: "#b3261e" }).setLngLat([config.lon, config.lat]).addTo(map);
  map.on("click", "places", (event) => {
    const id = event.features[0].id;
    if (id !== config.id) window.location.href = "/places/" + id + "/";
  });
  map.on("mouseenter", "places", () => { map.getCanvas().style.cursor = "pointer"; });
  map.on("mouseleave", "places", () => { map.getCanvas().style.cursor = ""; });
  window.placesMap = map;
})();
