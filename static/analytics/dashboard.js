// The analytics dashboard (admin): a choropleth of a chosen figure per district on the offline
// basemap (MapLibre), religions per region as bars, founding decades and a sensor's PM2.5 over
// time (Chart.js). Every number comes from the public statistics API (/api/v1/stats/), as
// researchers get it; the page only draws. window.placesDashboard exposes the map, the charts
// and what each drew, for the browser tests.
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("dashboard-config").textContent);
  const RELIGIONS = config.religions;  // code -> label
  const status = document.getElementById("dashboard-status");
  const dashboard = { map: null, charts: {}, drawn: {}, errors: [] };
  window.placesDashboard = dashboard;

  // The map page's Okabe–Ito colours (static/places/map.js), so a religion looks the same on
  // both; the rarer religions share black, other is grey and unknown light grey.
  const RELIGION_COLOURS = {
    christian: "#0072B2", muslim: "#009E73", jewish: "#E69F00", hindu: "#D55E00",
    sikh: "#F0E442", buddhist: "#CC79A7", bahai: "#56B4E9",
    jain: "#000000", shinto: "#000000", taoist: "#000000", zoroastrian: "#000000", multifaith: "#000000",
  };
  const NO_COLOUR = "#8a8a8a";  // other
  RELIGION_COLOURS.unknown = "#cfcfcf";
  // Sequential ColorBrewer YlGnBu (as the map's density layer), read by lightness alone.
  const BANDS = ["#ffffcc", "#c7e9b4", "#7fcdbb", "#41b6c4", "#2c7fb8", "#253494"];
  const NO_FIGURE = "rgba(160, 160, 160, 0.35)";
  const TOP_REGIONS = 12;

  function getJson(url) {
    return fetch(url, { headers: { Accept: "application/json" } }).then((response) => {
      if (!response.ok) throw new Error(url + ": the server answered " + response.status);
      return response.json();
    });
  }

  function failed(what, element) {
    return (error) => {
      dashboard.errors.push(what + ": " + error.message);
      (element || status).textContent = what + " could not be drawn: " + error.message;
    };
  }

  // A figure of a summary by its path in the API's JSON ("quality.unnamed.rate").
  function figureOf(summary, path) {
    return path.split(".").reduce((value, key) => (value == null ? null : value[key]), summary);
  }

  const isRate = (path) => path.endsWith(".rate");
  function formatted(value, path) {
    if (value == null) return "no figure";
    if (isRate(path)) return (value * 100).toLocaleString("en-GB", { maximumFractionDigits: 1 }) + " %";
    return value.toLocaleString("en-GB", { maximumFractionDigits: value < 10 ? 3 : 1 });
  }

  // Class breaks at the sextiles of the values (duplicates merged): every colour holds about
  // as many districts, whatever the figure's spread.
  function breaks(values) {
    const sorted = values.slice().sort((a, b) => a - b);
    const found = [sorted[0]];
    for (let i = 1; i < BANDS.length; i += 1) {
      const at = sorted[Math.floor((i * sorted.length) / BANDS.length)];
      if (at > found[found.length - 1]) found.push(at);
    }
    return found;
  }

  // --- The choropleth -------------------------------------------------------------------
  const figureSelect = document.getElementById("figure");
  const legend = document.getElementById("choropleth-legend");
  const mapStatus = document.getElementById("choropleth-status");
  const basemap = window.PlacesBasemap.style(config.basemap);
  const map = new maplibregl.Map({
    container: "choropleth",
    bounds: config.extent || [-11, 49.5, 2.5, 61],
    fitBoundsOptions: { padding: 10 },
    attributionControl: { compact: false },
    style: {
      version: 8,
      sources: { ...basemap.sources, regions: { type: "vector", url: "/tiles/regions.json?level=district" } },
      layers: [
        ...basemap.layers,
        { id: "choropleth", type: "fill", source: "regions", "source-layer": "regions",
          paint: { "fill-color": NO_FIGURE, "fill-opacity": 0.8 } },
        { id: "district-lines", type: "line", source: "regions", "source-layer": "regions",
          paint: { "line-color": "#6d655a", "line-width": 0.4, "line-opacity": 0.6 } },
        ...basemap.labels,
      ],
    },
  });
  window.PlacesBasemap.drawText(map);
  window.PlacesBasemap.loadAfter(map, "regions", config.basemap);
  map.addControl(new maplibregl.NavigationControl(), "top-right");
  dashboard.map = map;

  let districts = null;  // the summaries list, fetched once
  const mapLoaded = new Promise((resolve) => map.once("load", resolve));

  function showFigure(path) {
    const label = config.figures[path];
    const values = {};
    // Every district's state is set, null where it has no figure, so none keeps the last one.
    districts.results.forEach((summary) => {
      const value = figureOf(summary, path);
      const known = typeof value === "number";
      if (known) values[summary.region.id] = value;
      map.setFeatureState({ source: "regions", sourceLayer: "regions", id: summary.region.id },
        { value: known ? value : null });
    });
    const numbers = Object.values(values);
    legend.replaceChildren();
    if (numbers.length) {
      const cuts = breaks(numbers);
      const step = ["step", ["feature-state", "value"], BANDS[0]];
      cuts.slice(1).forEach((cut, i) => step.push(cut, BANDS[i + 1]));
      map.setPaintProperty("choropleth", "fill-color",
        ["case", ["==", ["typeof", ["feature-state", "value"]], "number"], step, NO_FIGURE]);
      cuts.forEach((cut, i) => {
        const item = document.createElement("li");
        const swatch = document.createElement("span");
        swatch.className = "dash-swatch";
        swatch.style.background = BANDS[i];
        const next = cuts[i + 1];
        item.append(swatch, next === undefined ? formatted(cut, path) + " or more"
          : formatted(cut, path) + " to under " + formatted(next, path));
        legend.append(item);
      });
    } else {
      map.setPaintProperty("choropleth", "fill-color", NO_FIGURE);
    }
    mapStatus.textContent = label + ": " + numbers.length + " of " + districts.count + " districts have a figure.";
    dashboard.drawn.choropleth = { figure: path, values: values, breaks: numbers.length ? breaks(numbers) : [] };
  }

  Promise.all([getJson(config.api + "?level=district"), mapLoaded])
    .then(([list]) => {
      districts = list;
      showFigure(figureSelect.value);
      figureSelect.addEventListener("change", () => showFigure(figureSelect.value));
    })
    .catch(failed("The map's figures", mapStatus));

  const popup = new maplibregl.Popup({ closeButton: true, maxWidth: "18rem" });
  map.on("click", "choropleth", (event) => {
    const feature = event.features[0];
    const value = (map.getFeatureState({ source: "regions", sourceLayer: "regions", id: feature.id }) || {}).value;
    const box = document.createElement("div");
    const title = document.createElement("strong");
    title.textContent = feature.properties.name;
    box.append(title, document.createElement("br"),
      config.figures[figureSelect.value] + ": " + formatted(value, figureSelect.value));
    popup.setLngLat(event.lngLat).setDOMContent(box).addTo(map);
    showDecades({ id: feature.id, name: feature.properties.name });
  });
  map.on("mouseenter", "choropleth", () => { map.getCanvas().style.cursor = "pointer"; });
  map.on("mouseleave", "choropleth", () => { map.getCanvas().style.cursor = ""; });

  // --- Charts ---------------------------------------------------------------------------
  // No animation: a chart is drawn the moment its data arrives (and tests need not wait).
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.font.family = "system-ui, 'DejaVu Sans', sans-serif";

  function chart(id, options) {
    if (dashboard.charts[id]) dashboard.charts[id].destroy();
    dashboard.charts[id] = new Chart(document.getElementById(id + "-chart"), options);
    return dashboard.charts[id];
  }

  // Religions per region: the regions of a level with the most places (the rankings
  // endpoint), their religions stacked (the comparison endpoint).
  const levelSelect = document.getElementById("religions-level");
  let ranked = [];
  function showReligions(level) {
    return getJson("/api/v1/stats/rankings/?order=places&limit=" + TOP_REGIONS + "&level=" + level)
      .then((ranking) => {
        const ids = ranking.results.map((row) => row.region.id);
        return ids.length ? getJson("/api/v1/stats/compare/?regions=" + ids.join(",")) : { results: [] };
      })
      .then((compared) => {
        ranked = compared.results;
        // One stack per religion any of the regions has ("unknown" and "other" included, so
        // a bar is as long as the region's places).
        const present = Object.keys(RELIGIONS).filter((code) => ranked.some((s) => s.by_religion[code]));
        const datasets = present.map((code) => ({
          label: RELIGIONS[code], code: code,
          data: ranked.map((s) => s.by_religion[code] || 0),
          backgroundColor: RELIGION_COLOURS[code] || NO_COLOUR,
        }));
        chart("religions", {
          type: "bar",
          data: { labels: ranked.map((s) => s.region.name), datasets: datasets },
          options: {
            indexAxis: "y",
            scales: { x: { stacked: true, title: { display: true, text: "Places" } }, y: { stacked: true } },
            plugins: { legend: { position: "bottom" } },
            onClick: (event, elements) => {
              if (elements.length) showDecades(ranked[elements[0].index].region);
            },
          },
        });
        dashboard.drawn.religions = { level: level, regions: ranked.map((s) => s.region.id) };
        return ranked;
      });
  }
  levelSelect.addEventListener("change", () => showReligions(levelSelect.value).catch(failed("Religions per region")));

  // Founding decades of one region (its series with interval=decade).
  const decadesRegion = document.getElementById("decades-region");
  function showDecades(region) {
    decadesRegion.textContent = region.name + ": places founded per decade, from the dated ones.";
    return getJson("/api/v1/stats/summaries/" + region.id + "/series/?interval=decade")
      .then((series) => {
        chart("decades", {
          type: "bar",
          data: {
            labels: series.points.map((point) => point.t + "s"),
            datasets: [{ label: "Places founded", data: series.points.map((point) => point.places),
              backgroundColor: "#2c7fb8" }],
          },
          options: { plugins: { legend: { display: false } },
            scales: { y: { beginAtZero: true, title: { display: true, text: "Places" } } } },
        });
        if (!series.points.length) decadesRegion.textContent = region.name + ": no dated places.";
        dashboard.drawn.decades = { region: region.id, points: series.points.length };
      })
      .catch(failed("Founding decades", decadesRegion));
  }

  // A sensor's PM2.5: mean, minimum and maximum per hour or day (its stored rollups).
  const sensorSelect = document.getElementById("sensor");
  const intervalSelect = document.getElementById("sensor-interval");
  const sensorStatus = document.getElementById("sensor-status");
  function bucketLabel(t, interval) {
    return interval === "hour" ? t.slice(0, 10) + " " + t.slice(11, 16) : t.slice(0, 10);
  }
  function showSensor() {
    const interval = intervalSelect.value;
    const sensor = sensorSelect.value;
    return getJson("/api/v1/stats/sensors/" + sensor + "/series/?interval=" + interval)
      .then((series) => {
        const line = (label, key, colour, width) => ({
          label: label, data: series.points.map((point) => point[key]), borderColor: colour,
          backgroundColor: colour, borderWidth: width, pointRadius: 2, tension: 0,
        });
        chart("sensor", {
          type: "line",
          data: {
            labels: series.points.map((point) => bucketLabel(point.t, interval)),
            datasets: [line("Mean", "mean", "#253494", 2), line("Minimum", "min", "#7fcdbb", 1),
              line("Maximum", "max", "#d55e00", 1)],
          },
          options: { scales: { y: { beginAtZero: true, title: { display: true, text: series.unit } } },
            plugins: { legend: { position: "bottom" } } },
        });
        sensorStatus.textContent = series.points.length + (interval === "hour" ? " hours" : " days") +
          " of " + series.sensor.external_id + ", times in UTC.";
        dashboard.drawn.sensor = { sensor: Number(sensor), interval: interval, points: series.points.length };
      })
      .catch(failed("The sensor's series", sensorStatus));
  }
  if (sensorSelect) {
    sensorSelect.addEventListener("change", showSensor);
    intervalSelect.addEventListener("change", showSensor);
    showSensor();
  }

  // First the bars; the decades start with the region at their top (a country's by default).
  showReligions(levelSelect.value)
    .then(() => getJson("/api/v1/stats/rankings/?order=places&limit=1&level=country"))
    .then((ranking) => {
      const first = ranking.results[0] || (ranked[0] && { region: ranked[0].region });
      if (first) return showDecades(first.region);
      decadesRegion.textContent = "No region has a summary yet.";
      return null;
    })
    .catch(failed("Religions per region"))
    .finally(() => { status.textContent = dashboard.errors.length ? dashboard.errors.join("; ") : ""; });
})();
