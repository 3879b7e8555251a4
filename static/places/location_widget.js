// The admin's location widget (places.admin_base.LocationMapWidget): the place's point on the
// same basemap as /map/ (MAP_STYLE_URL, or the offline Natural Earth files), with the places
// around it. A click on the map moves the point there, the marker can be dragged, and the
// typed longitude and latitude move it; the field's WKT and the typed boxes always agree.
(function () {
  "use strict";

  const POINT = /^\s*(?:SRID=\d+;)?\s*POINT\s*\(\s*(\S+)\s+(\S+)\s*\)\s*$/i;
  // Six decimals, about 0.1 m: what is written is what is shown, in the field and the boxes.
  const round = (value) => Math.round(value * 1e6) / 1e6;

  function start(widget) {
    const config = JSON.parse(document.getElementById(widget.dataset.config).textContent);
    const field = document.getElementById(config.id);
    const lonInput = document.getElementById(config.lonInput);
    const latInput = document.getElementById(config.latInput);
    const match = field.value.match(POINT);
    const initial = match && [Number(match[1]), Number(match[2])].every(Number.isFinite)
      ? [Number(match[1]), Number(match[2])] : null;

    const places = {
      id: "places", type: "circle", source: "places", "source-layer": "places",
      paint: { "circle-color": "#0072B2", "circle-radius": 4, "circle-opacity": 0.7,
               "circle-stroke-color": "#1a1a1a", "circle-stroke-width": 0.6 },
    };
    const map = window.PlacesBasemap.placesMap(config, places, {
      container: widget.querySelector(".location-map"),
      center: initial || [-1.6, 53.2],
      zoom: initial ? 14 : 4,
    });

    const marker = new maplibregl.Marker({ color: "#b3261e", draggable: true });
    if (initial) marker.setLngLat(initial).addTo(map);

    function write(lon, lat, fromBoxes) {
      field.value = "POINT (" + lon + " " + lat + ")";
      marker.setLngLat([lon, lat]).addTo(map);
      if (!fromBoxes) {
        if (lonInput) lonInput.value = String(lon);
        if (latInput) latInput.value = String(lat);
      }
    }

    map.on("click", (event) => {
      // A click on the marker is not a new position: the pin's head is drawn above the point,
      // and taking the click's position would move the point up by the pin's height.
      if (marker.getElement().contains(event.originalEvent.target)) return;
      write(round(event.lngLat.lng), round(event.lngLat.lat), false);
    });
    marker.on("dragend", () => {
      const at = marker.getLngLat();
      write(round(at.lng), round(at.lat), false);
    });

    // Typed coordinates move the point as they are typed, once both are numbers in range.
    function typed() {
      const lon = lonInput && lonInput.value.trim() !== "" ? Number(lonInput.value) : NaN;
      const lat = latInput && latInput.value.trim() !== "" ? Number(latInput.value) : NaN;
      if (!(Math.abs(lon) <= 180 && Math.abs(lat) <= 90)) return;
      write(lon, lat, true);
      map.easeTo({ center: [lon, lat] });
    }
    [lonInput, latInput].forEach((input) => { if (input) input.addEventListener("input", typed); });

    window.placesLocationMaps = window.placesLocationMaps || {};
    window.placesLocationMaps[config.id] = { map: map, marker: marker };  // for browser tests
  }

  function startAll() { document.querySelectorAll(".location-widget").forEach(start); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", startAll);
  else startAll();
})();
