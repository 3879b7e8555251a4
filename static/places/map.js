// The Places map: our own vector tiles (clusters below zoom 10, every place above), drawn
// with WebGL by MapLibre. Everything comes from this server; no external tiles or fonts.
(function () {
  "use strict";

  const COLOURS = {
    christian: "#3a6fb0", muslim: "#2e8b57", jewish: "#c9a227", hindu: "#e4572e",
    sikh: "#f28e2b", buddhist: "#9c6ade", bahai: "#17becf", jain: "#bcbd22",
    shinto: "#d62728", taoist: "#8c564b", zoroastrian: "#7f7f7f", multifaith: "#e377c2",
  };
  const colour = ["match", ["get", "religion"]];
  Object.entries(COLOURS).forEach(([religion, hex]) => colour.push(religion, hex));
  colour.push("#999999");

  const container = document.getElementById("map");
  const status = document.getElementById("status");
  const select = document.getElementById("religion");
  const tileJson = (religion) => "/tiles/places.json" + (religion ? "?religion=" + encodeURIComponent(religion) : "");

  // ?bbox=west,south,east,north (an import job's page links so) opens the map on that box.
  const bbox = (new URLSearchParams(window.location.search).get("bbox") || "").split(",").map(Number);
  const bounds = bbox.length === 4 && bbox.every(Number.isFinite) ? [[bbox[0], bbox[1]], [bbox[2], bbox[3]]] : undefined;

  const map = new maplibregl.Map({
    container: "map",
    center: [-1.6, 53.2],
    zoom: 5,
    bounds: bounds,
    fitBoundsOptions: { padding: 40, maxZoom: 14 },
    maxZoom: 18,
    style: {
      version: 8,
      sources: {
        countries: { type: "geojson", data: container.dataset.basemap, attribution: "Made with Natural Earth" },
        regions: { type: "vector", url: "/tiles/regions.json?level=district" },
        places: { type: "vector", url: tileJson("") },
      },
      layers: [
        { id: "sea", type: "background", paint: { "background-color": "#dbe7ef" } },
        { id: "land", type: "fill", source: "countries", paint: { "fill-color": "#f3f1ea", "fill-outline-color": "#a0a0a0" } },
        { id: "districts", type: "line", source: "regions", "source-layer": "regions", minzoom: 6,
          paint: { "line-color": "#9a8f80", "line-width": 0.6 } },
        { id: "clusters", type: "circle", source: "places", "source-layer": "clusters",
          paint: {
            "circle-color": colour, "circle-opacity": 0.75,
            "circle-radius": ["interpolate", ["linear"], ["sqrt", ["get", "count"]], 1, 2.5, 30, 18],
          } },
        { id: "places", type: "circle", source: "places", "source-layer": "places",
          paint: {
            "circle-color": colour,
            "circle-radius": ["interpolate", ["linear"], ["zoom"], 10, 2.5, 16, 7],
            "circle-stroke-color": "#ffffff", "circle-stroke-width": 0.6,
          } },
      ],
    },
  });
  map.addControl(new maplibregl.NavigationControl(), "top-right");
  window.placesMap = map;  // for browser tests and the curious

  // What is drawn, for the status line and for tests (never frame rates).
  map.on("idle", () => {
    const drawn = map.queryRenderedFeatures({ layers: ["places", "clusters"] });
    const places = drawn.reduce((n, f) => n + (f.layer.id === "clusters" ? f.properties.count : 1), 0);
    status.textContent = drawn.length + " symbols for " + places.toLocaleString() + " places in view (zoom " + map.getZoom().toFixed(1) + ")";
    container.dataset.drawnFeatures = String(drawn.length);
    container.dataset.drawnPlaces = String(places);
  });

  select.addEventListener("change", () => {
    map.getSource("places").setUrl(tileJson(select.value));
  });

  map.on("click", "clusters", (event) => {
    map.easeTo({ center: event.lngLat, zoom: Math.min(map.getZoom() + 2, 12) });
  });
  map.on("click", "places", (event) => {
    const feature = event.features[0];
    const name = feature.properties.name || "(no name yet)";
    const box = document.createElement("div");
    const title = document.createElement("strong");
    title.textContent = name;
    box.append(title, document.createElement("br"), feature.properties.religion, document.createElement("br"));
    const api = document.createElement("a");
    api.href = "/api/v1/places/" + feature.id + "/";
    api.textContent = "API";
    const admin = document.createElement("a");
    admin.href = "/admin/places/place/" + feature.id + "/change/";
    admin.textContent = "edit";
    box.append(api, " · ", admin);
    new maplibregl.Popup().setLngLat(event.lngLat).setDOMContent(box).addTo(map);
  });
  // Sensors (PM2.5): off until switched on, so a visit that does not want them fetches
  // nothing; each switch on fetches the latest readings again. Bands come from the server
  // (UK DAQI for PM2.5); only their colours live here.
  const BAND_COLOURS = { low: "#2ca25f", moderate: "#f0b400", high: "#e34a33", very_high: "#8e24aa" };
  const bandColour = ["match", ["get", "band"]];
  Object.entries(BAND_COLOURS).forEach(([band, hex]) => bandColour.push(band, hex));
  bandColour.push("#999999");
  const sensorsToggle = document.getElementById("sensors");
  const legend = document.getElementById("sensor-legend");
  const sensorStatus = document.getElementById("sensor-status");
  const bandLabels = {};

  function showBands(bands) {
    const list = document.getElementById("sensor-bands");
    list.replaceChildren();
    bands.forEach((band, i) => {
      bandLabels[band.band] = band.label;
      const next = bands[i + 1];
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = BAND_COLOURS[band.band] || "#999999";
      const range = next ? band.from + "–" + (next.from - 1) : band.from + " or more";
      item.append(swatch, band.label + " (" + band.indexes.join("–").replace(/^(\d+)–\1$/, "$1") + "): " + range + " µg/m³");
      list.append(item);
    });
  }

  function drawSensors(collection) {
    showBands(collection.bands);
    const count = collection.features.length;
    sensorStatus.textContent = count + (count === 1 ? " sensor" : " sensors") + " with a reading";
    if (map.getSource("sensors")) {
      map.getSource("sensors").setData(collection);
      map.setLayoutProperty("sensors", "visibility", "visible");
      return;
    }
    map.addSource("sensors", { type: "geojson", data: collection });
    map.addLayer({ id: "sensors", type: "circle", source: "sensors",
      paint: {
        "circle-color": bandColour, "circle-radius": ["interpolate", ["linear"], ["zoom"], 5, 4, 14, 8],
        "circle-stroke-color": "#ffffff", "circle-stroke-width": 1,
      } });
  }

  sensorsToggle.addEventListener("change", () => {
    legend.hidden = !sensorsToggle.checked;
    if (!sensorsToggle.checked) {
      if (map.getLayer("sensors")) map.setLayoutProperty("sensors", "visibility", "none");
      return;
    }
    sensorStatus.textContent = "Loading sensors…";
    fetch("/api/v1/sensors/latest/", { headers: { Accept: "application/geo+json" } })
      .then((response) => {
        if (!response.ok) throw new Error("the server answered " + response.status);
        return response.json();
      })
      .then((collection) => {
        if (!sensorsToggle.checked) return;  // switched off while loading
        if (map.isStyleLoaded()) drawSensors(collection);
        else map.once("load", () => drawSensors(collection));
      })
      .catch((error) => { sensorStatus.textContent = "Sensors could not be loaded: " + error.message; });
  });

  map.on("click", "sensors", (event) => {
    const p = event.features[0].properties;
    const box = document.createElement("div");
    const title = document.createElement("strong");
    title.textContent = "PM2.5 " + p.pm2_5 + " " + p.unit;
    const band = (bandLabels[p.band] || p.band) + " (DAQI " + p.index + ")";
    const when = new Date(p.time).toLocaleString();
    box.append(title, document.createElement("br"), band, document.createElement("br"), when,
      document.createElement("br"), (p.kind || "sensor") + " " + p.sensor);
    new maplibregl.Popup().setLngLat(event.lngLat).setDOMContent(box).addTo(map);
  });

  ["clusters", "places", "sensors"].forEach((layer) => {
    map.on("mouseenter", layer, () => { map.getCanvas().style.cursor = "pointer"; });
    map.on("mouseleave", layer, () => { map.getCanvas().style.cursor = ""; });
  });
})();
