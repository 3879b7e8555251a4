// The Places map: our own vector tiles (clusters below zoom 10, every place above) over an
// offline Natural Earth basemap or the style MAP_STYLE_URL names, drawn with WebGL by MapLibre.
// The URL keeps the view and the filters, so a link or a reload shows the same map.
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("map-config").textContent);
  const RELIGIONS = config.religions;  // code -> label
  const DATASETS = config.datasets;  // slug -> {name, licence, attribution, source_url}
  const DATASET_BY_ID = {};
  Object.entries(DATASETS).forEach(([slug, d]) => { DATASET_BY_ID[d.id] = slug; });

  // Okabe–Ito colours: told apart with every common colour-vision deficiency. The rarer
  // religions share black; unknown and other are grey.
  const PALETTE = [
    ["christian", "#0072B2"], ["muslim", "#009E73"], ["jewish", "#E69F00"], ["hindu", "#D55E00"],
    ["sikh", "#F0E442"], ["buddhist", "#CC79A7"], ["bahai", "#56B4E9"],
  ];
  const RARE = ["jain", "shinto", "taoist", "zoroastrian", "multifaith"];
  const RARE_COLOUR = "#000000";
  const NO_COLOUR = "#8a8a8a";
  const colour = ["match", ["get", "religion"]];
  PALETTE.forEach(([religion, hex]) => colour.push(religion, hex));
  colour.push(RARE, RARE_COLOUR, NO_COLOUR);

  const container = document.getElementById("map");
  const status = document.getElementById("status");
  const filterInputs = {
    religion: document.getElementById("religion"),
    denomination: document.getElementById("denomination"),
    status: document.getElementById("status-filter"),
  };
  const DEFAULT_STATUS = "active";
  // One box per dataset that holds places, each a layer switched on and off.
  const datasetBoxes = [...document.querySelectorAll("#datasets input[type=checkbox]")];
  const PLACE_LAYERS = ["clusters", "places", "cluster-counts"];

  // --- The URL: ?lat=&lon=&z= and the filters; ?bbox=w,s,e,n (import pages link so) too. ---
  const params = new URLSearchParams(window.location.search);
  Object.entries(filterInputs).forEach(([name, input]) => {
    const value = params.get(name);
    if (value === null) return;
    if (input.tagName === "SELECT" && ![...input.options].some((o) => o.value === value)) return;
    input.value = value;
  });
  if (!filterInputs.denomination.checkValidity()) filterInputs.denomination.value = "";
  // ?dataset=a,b ticks those datasets alone; ?dataset= (empty) none. Once the link or a click
  // has named datasets, the URL keeps naming them, so that it means the same when a dataset
  // is added later. A link naming none we know is ignored, as a religion we do not know is.
  let datasetsNamed = false;
  const namedDatasets = params.get("dataset");
  if (namedDatasets !== null) {
    const wanted = new Set(namedDatasets.split(",").map((slug) => slug.trim()).filter(Boolean));
    if (!wanted.size || datasetBoxes.some((box) => wanted.has(box.value))) {
      datasetBoxes.forEach((box) => { box.checked = wanted.has(box.value); });
      datasetsNamed = true;
    }
  }
  const tickedDatasets = () => datasetBoxes.filter((box) => box.checked).map((box) => box.value);
  const noDataset = () => datasetBoxes.length > 0 && tickedDatasets().length === 0;

  function number(name, low, high) {
    const text = params.get(name);
    const value = text === null || text === "" ? NaN : Number(text);
    return Number.isFinite(value) && value >= low && value <= high ? value : null;
  }
  const lat = number("lat", -85, 85);
  const lon = number("lon", -180, 180);
  const zoom = number("z", 0, 18);
  const bbox = (params.get("bbox") || "").split(",").map(Number);
  const view = lat !== null && lon !== null
    ? { center: [lon, lat], zoom: zoom === null ? 12 : zoom }
    : bbox.length === 4 && bbox.every(Number.isFinite)
      ? { bounds: [[bbox[0], bbox[1]], [bbox[2], bbox[3]]], fitBoundsOptions: { padding: 40, maxZoom: 14 } }
      : { center: [-1.6, 53.2], zoom: 5 };

  // The API's filters. With every dataset ticked none is named (one query for all of them);
  // with none ticked there is nothing to ask for (see noDataset).
  function filters() {
    const query = new URLSearchParams();
    Object.entries(filterInputs).forEach(([name, input]) => {
      const value = input.value.trim();
      if (value && !(name === "status" && value === DEFAULT_STATUS)) query.set(name, value);
    });
    const ticked = tickedDatasets();
    if (ticked.length && ticked.length < datasetBoxes.length) query.set("dataset", ticked.join(","));
    return query;
  }

  // Commas stay commas in links: dataset=a,b rather than dataset=a%2Cb (slugs have none).
  const queryText = (query) => query.toString().replace(/%2C/gi, ",");

  function writeUrl() {
    const centre = map.getCenter();
    const query = new URLSearchParams();
    query.set("lat", centre.lat.toFixed(5));
    query.set("lon", centre.wrap().lng.toFixed(5));
    query.set("z", String(Math.round(map.getZoom() * 100) / 100));
    filters().forEach((value, name) => query.set(name, value));
    if (datasetsNamed) query.set("dataset", tickedDatasets().join(","));
    // The districts' figure, while they are coloured by it.
    if (densityToggle.checked) query.set("figure", figureSelect.value);
    const url = window.location.pathname + "?" + queryText(query);
    if (url !== window.location.pathname + window.location.search) {
      window.history.replaceState(null, "", url);
    }
  }

  // Districts coloured by one figure of the analytics API. Places per 1,000 km² (the default)
  // keeps fixed bands, comparable from visit to visit; the other figures are cut into
  // quantile classes of their values, each holding about as many districts. Every ramp is
  // sequential ColorBrewer YlGnBu, read by lightness alone, so it holds for every
  // colour-vision deficiency; a district without the figure is grey, told apart by its hue.
  const DENSITY_BANDS = [[0, "#ffffcc"], [50, "#c7e9b4"], [200, "#7fcdbb"], [500, "#41b6c4"],
    [1000, "#2c7fb8"], [2000, "#253494"]];
  const DENSITY_BREAKS = DENSITY_BANDS.map(([from]) => from);
  const DENSITY_RAMP = DENSITY_BANDS.map(([, hex]) => hex);
  const QUANTILE_RAMP = ["#ffffcc", "#a1dab4", "#41b6c4", "#2c7fb8", "#253494"];
  const NO_FIGURE_COLOUR = "#bdbdbd";
  const NO_FIGURE = -1;  // the feature state of a district the figure is missing for
  const SHARE = { scale: 100, digits: 1, suffix: "%", source: "summaries" };
  // Each figure is its own feature-state key (its name), filled once from its endpoint:
  // "regions" is the live /stats/regions/, "summaries" the stored /stats/summaries/.
  const FIGURES = {
    density: { label: "Places per 1,000 km²", title: "Places per 1,000 km²", source: "regions",
      value: (row) => row.per_1000_km2, id: (row) => row.region_id, why: "area unknown" },
    per_100k_people: { label: "Places per 100,000 people", title: "Places per 100,000 people",
      source: "regions", value: (row) => row.per_100k_people, id: (row) => row.region_id,
      digits: 1, why: "population unknown" },
    shannon: { label: "Religious diversity (Shannon)",
      title: "Shannon index of the places' religions (0: all of one religion)",
      source: "summaries", value: (s) => s.diversity.shannon, digits: 2 },
    simpson: { label: "Religious diversity (Simpson)",
      title: "Simpson index: the chance two places differ in religion",
      source: "summaries", value: (s) => s.diversity.simpson, digits: 2 },
    unknown_religion: { ...SHARE, label: "Share of unknown religion",
      title: "Places of unknown religion, % of the district's places",
      value: (s) => s.quality.unknown_religion.rate },
    unnamed: { ...SHARE, label: "Share without a name",
      title: "Places without a name, % of the district's places",
      value: (s) => s.quality.unnamed.rate },
    duplicate_coordinates: { ...SHARE, label: "Share on duplicate coordinates",
      title: "Places sharing their coordinates with another, % of the district's places",
      value: (s) => s.quality.duplicate_coordinates.rate },
    outside_region: { ...SHARE, label: "Share outside their district",
      title: "Places whose point lies outside their district, % of the district's places",
      value: (s) => s.quality.outside_region.rate },
  };
  const DEFAULT_FIGURE = "density";

  // A fill colour by the figure's feature state: transparent until loaded, grey without it.
  function figureColour(name, breaks, ramp) {
    const step = ["step", ["coalesce", ["feature-state", name], NO_FIGURE - 1], "rgba(0, 0, 0, 0)",
      NO_FIGURE, NO_FIGURE_COLOUR];
    breaks.forEach((from, i) => step.push(from, ramp[i]));
    return step;
  }

  const tileJson = () => {
    const query = queryText(filters());
    return "/tiles/places.json" + (query ? "?" + query : "");
  };

  // --- The map ---
  const basemap = window.PlacesBasemap.style(config.basemap);
  const own = {
    sources: {
      regions: { type: "vector", url: "/tiles/regions.json?level=district" },
      places: { type: "vector", url: tileJson() },
    },
    layers: [
      // A district's figure from the analytics API, joined by feature id (the region's id)
      // through feature state; hidden until switched on.
      { id: "density", type: "fill", source: "regions", "source-layer": "regions",
        layout: { visibility: "none" },
        paint: { "fill-color": figureColour(DEFAULT_FIGURE, DENSITY_BREAKS, DENSITY_RAMP),
          "fill-opacity": 0.55 } },
      { id: "districts", type: "line", source: "regions", "source-layer": "regions", minzoom: 6,
        paint: { "line-color": "#9a8f80", "line-width": 0.6, "line-opacity": 0.7 } },
      { id: "clusters", type: "circle", source: "places", "source-layer": "clusters",
        layout: { visibility: noDataset() ? "none" : "visible" },
        paint: {
          "circle-color": colour, "circle-opacity": 0.85,
          "circle-radius": ["interpolate", ["linear"], ["sqrt", ["get", "count"]], 1, 4, 30, 22],
          "circle-stroke-color": "#1a1a1a", "circle-stroke-width": 0.6,
        } },
      { id: "places", type: "circle", source: "places", "source-layer": "places",
        layout: { visibility: noDataset() ? "none" : "visible" },
        paint: {
          "circle-color": colour,
          "circle-radius": ["interpolate", ["linear"], ["zoom"], 10, 3.5, 16, 8],
          "circle-stroke-color": "#1a1a1a", "circle-stroke-width": 0.8,
        } },
    ],
  };

  // Cluster counts are drawn as images made on demand (no glyph server): hundreds of them
  // took well over a second before the first points showed, so they come after the first
  // idle, on top of the clusters.
  const countsLayer = { id: "cluster-counts", type: "symbol", source: "places", "source-layer": "clusters",
    filter: [">", ["get", "count"], 1],
    layout: {
      "icon-image": ["concat", "count:", ["case", [">=", ["get", "count"], 10000],
        ["concat", ["to-string", ["round", ["/", ["get", "count"], 1000]]], "k"],
        ["to-string", ["get", "count"]]]],
      "icon-allow-overlap": false, "icon-ignore-placement": false,
      "symbol-sort-key": ["-", 0, ["get", "count"]],
    } };

  const offline = !config.styleUrl;
  const map = new maplibregl.Map({
    container: "map",
    ...view,
    maxZoom: 18,
    attributionControl: { compact: false },
    style: offline
      ? { version: 8, sources: { ...basemap.sources, ...own.sources },
          layers: [...basemap.layers, ...own.layers, ...basemap.labels] }
      : config.styleUrl,
  });
  if (!offline) {
    // A deployment's own style: our places go on top of whatever it draws.
    map.once("style.load", () => {
      Object.entries(own.sources).forEach(([id, source]) => map.addSource(id, source));
      own.layers.forEach((layer) => map.addLayer(layer));
    });
  }
  window.PlacesBasemap.drawText(map);
  if (offline) window.PlacesBasemap.loadAfter(map, "places", config.basemap);
  map.addControl(new maplibregl.NavigationControl(), "top-right");
  map.addControl(new maplibregl.ScaleControl(), "bottom-left");
  window.placesMap = map;  // for browser tests and the curious

  // With no dataset ticked the places' layers are hidden rather than asked for.
  function showPlaces() {
    const visibility = noDataset() ? "none" : "visible";
    PLACE_LAYERS.forEach((id) => { if (map.getLayer(id)) map.setLayoutProperty(id, "visibility", visibility); });
  }
  map.once("idle", () => {
    if (!map.getLayer("cluster-counts")) map.addLayer(countsLayer, "places");
    showPlaces();
  });
  map.on("moveend", writeUrl);
  map.once("load", writeUrl);

  // --- Legend ---
  const legend = document.getElementById("legend");
  function legendItem(hex, text) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = hex;
    item.append(swatch, text);
    legend.append(item);
  }
  PALETTE.forEach(([religion, hex]) => legendItem(hex, RELIGIONS[religion] || religion));
  legendItem(RARE_COLOUR, RARE.map((r) => RELIGIONS[r] || r).join(", "));
  legendItem(NO_COLOUR, [RELIGIONS.other, RELIGIONS.unknown].join(", ") + " or not given");

  // --- What is drawn: the status line, the list for screen readers, and browser tests ---
  const inView = document.getElementById("in-view-list");
  const IN_VIEW_MAX = 50;
  map.on("idle", () => {
    if (!map.getLayer("places")) return;
    const drawn = map.queryRenderedFeatures({ layers: ["places", "clusters"] });
    const places = drawn.reduce((n, f) => n + (f.layer.id === "clusters" ? f.properties.count : 1), 0);
    status.textContent = (noDataset() ? "No dataset switched on. " : drawn.length ? "" : "Nothing here with these filters. ") +
      places.toLocaleString("en-GB") + " places in view (" + drawn.length + " symbols, zoom " + map.getZoom().toFixed(1) + ")";
    container.dataset.drawnFeatures = String(drawn.length);
    container.dataset.drawnPlaces = String(places);
    const points = drawn.filter((f) => f.layer.id === "places");
    inView.replaceChildren();
    if (!points.length) {
      // Zoomed out: the biggest clusters with their religions (what hovering one shows), each
      // a button that zooms in on it, so keyboards and screen readers get them too.
      const clusters = drawn.filter((f) => f.layer.id === "clusters")
        .sort((a, b) => b.properties.count - a.properties.count).slice(0, IN_VIEW_MAX);
      clusters.forEach((feature) => {
        const p = feature.properties;
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "cluster";
        button.textContent = p.count.toLocaleString("en-GB") + (p.count === 1 ? " place: " : " places: ") +
          (p.religions || p.religion + ":" + p.count).split(",").map((pair) => {
            const [code, n] = pair.split(":");
            return (RELIGIONS[code] || code) + " " + Number(n).toLocaleString("en-GB");
          }).join(", ");
        button.addEventListener("click", () => {
          map.easeTo({ center: feature.geometry.coordinates, zoom: Math.min(map.getZoom() + 2, 12) });
        });
        item.append(button);
        inView.append(item);
      });
      const item = document.createElement("li");
      item.textContent = drawn.length ? "Zoom in (to 10 or more) to list the places one by one." : "No places in view.";
      inView.append(item);
      return;
    }
    const seen = new Set();
    points.filter((f) => !seen.has(f.id) && seen.add(f.id))
      .sort((a, b) => (a.properties.name || "").localeCompare(b.properties.name || ""))
      .slice(0, IN_VIEW_MAX)
      .forEach((feature) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = (feature.properties.name || "(no name yet)") + " — " +
          (RELIGIONS[feature.properties.religion] || feature.properties.religion);
        button.addEventListener("click", () => {
          const [x, y] = feature.geometry.coordinates;
          openPopupAt({ lng: x, lat: y }, map.project([x, y]));
        });
        item.append(button);
        inView.append(item);
      });
    if (seen.size > IN_VIEW_MAX) {
      const item = document.createElement("li");
      item.textContent = "and " + (seen.size - IN_VIEW_MAX) + " more: zoom in to list them.";
      inView.append(item);
    }
  });

  // --- Filters ---
  function applyFilters() {
    if (!filterInputs.denomination.checkValidity()) {
      status.textContent = "Denomination: lower-case letters, digits and _ only.";
      return;
    }
    if (map.getSource("places") && !noDataset()) map.getSource("places").setUrl(tileJson());
    showPlaces();
    writeUrl();
  }
  Object.values(filterInputs).forEach((input) => input.addEventListener("change", applyFilters));
  datasetBoxes.forEach((box) => box.addEventListener("change", () => {
    datasetsNamed = true;
    applyFilters();
  }));

  // --- Popups: every place under the pointer, with labels, dataset and licence, dates ---
  const denominationLabel = (code) => code.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  let popup = null;

  function text(tag, content, className) {
    const element = document.createElement(tag);
    element.textContent = content;
    if (className) element.className = className;
    return element;
  }

  function link(href, content) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = content;
    return a;
  }

  function dates(p) {
    const start = p.start_date || p.start_date_raw;
    const end = p.end_date || p.end_date_raw;
    if (start && end) return "From " + start + " to " + end;
    if (start) return "Since " + start;
    if (end) return "Until " + end;
    return "";
  }

  function placeBox(feature, heading) {
    const p = feature.properties;
    const box = document.createElement("section");
    box.className = "place";
    box.append(text(heading, p.name || "(no name yet)"));
    const facts = document.createElement("dl");
    const add = (term, value) => { if (value) facts.append(text("dt", term), text("dd", value)); };
    add("Religion", RELIGIONS[p.religion] || p.religion);
    add("Denomination", (p.denominations || []).map(denominationLabel).join(", "));
    const dataset = DATASETS[p.dataset];
    add("Dataset", dataset ? dataset.name + (dataset.licence ? " (" + dataset.licence + ")" : "") : p.dataset);
    if (dataset && dataset.attribution) add("Attribution", dataset.attribution);
    add("Dates", dates(p));
    if (p.status && p.status !== DEFAULT_STATUS) add("Status", p.status);
    box.append(facts);
    const links = document.createElement("p");
    links.className = "links";
    links.append(link("/places/" + feature.id + "/", "Place page"), " · ",
      link("/api/v1/places/" + feature.id + "/", "API"));
    if (config.isStaff) links.append(" · ", link("/admin/places/place/" + feature.id + "/change/", "Edit in admin"));
    box.append(links);
    return box;
  }

  // Everything within a few pixels of the point, from the API (tiles thin dense areas and
  // carry no dates or licences): places on one spot are all listed, none picked silently.
  function openPopupAt(lngLat, point) {
    const r = 6;
    const sw = map.unproject([point.x - r, point.y + r]);
    const ne = map.unproject([point.x + r, point.y - r]);
    const query = filters();
    query.set("bbox", [sw.lng, sw.lat, ne.lng, ne.lat].map((v) => v.toFixed(6)).join(","));
    query.set("limit", "50");
    if (popup) popup.remove();
    const box = document.createElement("div");
    box.className = "places-popup";
    box.setAttribute("aria-live", "polite");
    box.append(text("p", "Loading…"));
    popup = new maplibregl.Popup({ maxWidth: "22rem", focusAfterOpen: true })
      .setLngLat(lngLat).setDOMContent(box).addTo(map);
    fetch("/api/v1/places/?" + queryText(query), { headers: { Accept: "application/geo+json" } })
      .then((response) => {
        if (!response.ok) throw new Error("the server answered " + response.status);
        return response.json();
      })
      .then((collection) => {
        const features = collection.features
          .sort((a, b) => (a.properties.name || "").localeCompare(b.properties.name || "") || a.id - b.id);
        box.replaceChildren();
        if (!features.length) {
          box.append(text("p", "No place here."));
          return;
        }
        if (features.length > 1) box.append(text("h2", features.length + " places here", "count"));
        features.forEach((f) => box.append(placeBox(f, features.length > 1 ? "h3" : "h2")));
        popup.setLngLat(features.length === 1 ? features[0].geometry.coordinates : lngLat);
      })
      .catch((error) => { box.replaceChildren(text("p", "Could not load the places: " + error.message)); });
  }

  map.on("click", "places", (event) => openPopupAt(event.lngLat, event.point));
  map.on("click", "clusters", (event) => {
    map.easeTo({ center: event.lngLat, zoom: Math.min(map.getZoom() + 2, 12) });
  });
  // A cluster's count and its religions on hover, most first, in the legend's colours (the
  // tiles carry "christian:12,muslim:3").
  const religionColour = (code) => (PALETTE.find(([r]) => r === code) || [null, RARE.includes(code) ? RARE_COLOUR : NO_COLOUR])[1];
  const hover = new maplibregl.Popup({ closeButton: false, closeOnClick: false, className: "hover" });
  let hovered = null;
  map.on("mousemove", "clusters", (event) => {
    const p = event.features[0].properties;
    hover.setLngLat(event.lngLat);
    if (hovered !== p.religions + "/" + p.count) {
      hovered = p.religions + "/" + p.count;
      const box = document.createElement("div");
      box.className = "cluster-religions";
      box.append(text("strong", p.count.toLocaleString("en-GB") + (p.count === 1 ? " place" : " places")));
      const list = document.createElement("ul");
      (p.religions || p.religion + ":" + p.count).split(",").forEach((pair) => {
        const [code, n] = pair.split(":");
        const item = document.createElement("li");
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = religionColour(code);
        item.append(swatch, (RELIGIONS[code] || code) + " " + Number(n).toLocaleString("en-GB"));
        list.append(item);
      });
      box.append(list);
      hover.setDOMContent(box);
    }
    if (!hover.isOpen()) hover.addTo(map);
  });
  map.on("mouseleave", "clusters", () => { hover.remove(); hovered = null; });

  // --- Search: coordinates fly there; anything else is a name (the API's q) ---
  const searchForm = document.getElementById("search");
  const searchInput = document.getElementById("search-input");
  const searchStatus = document.getElementById("search-status");
  const results = document.getElementById("search-results");
  const COORDINATES = /^\s*(-?\d{1,3}(?:\.\d+)?)\s*[,;\s]\s*(-?\d{1,3}(?:\.\d+)?)\s*$/;
  let marker = null;

  function flyToPlace(feature) {
    const [x, y] = feature.geometry.coordinates;
    // Listening first: with reduced motion the flight is a jump, over before flyTo returns.
    map.once("moveend", () => openPopupAt({ lng: x, lat: y }, map.project([x, y])));
    map.flyTo({ center: [x, y], zoom: Math.max(map.getZoom(), 16) });
  }

  searchForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = searchInput.value.trim();
    results.replaceChildren();
    if (!query) return;
    const match = query.match(COORDINATES);
    if (match) {
      let [a, b] = [Number(match[1]), Number(match[2])];
      // Latitude first, as maps and phones copy them; a first number beyond ±90 is a longitude.
      if (Math.abs(a) > 90 && Math.abs(b) <= 90) [a, b] = [b, a];
      if (Math.abs(a) > 90 || Math.abs(b) > 180) {
        searchStatus.textContent = "Latitude must be within ±90 and longitude within ±180.";
        return;
      }
      if (marker) marker.remove();
      marker = new maplibregl.Marker({ color: "#b3261e" }).setLngLat([b, a]).addTo(map);
      map.flyTo({ center: [b, a], zoom: Math.max(map.getZoom(), 15) });
      searchStatus.textContent = "Showing " + a + ", " + b + ".";
      return;
    }
    if (noDataset()) {
      searchStatus.textContent = "Switch a dataset on to search its places.";
      return;
    }
    const search = filters();
    search.set("q", query);
    search.set("limit", "10");
    search.set("fields", "name,religion,dataset");
    searchStatus.textContent = "Searching…";
    fetch("/api/v1/places/?" + queryText(search), { headers: { Accept: "application/geo+json" } })
      .then((response) => {
        if (!response.ok) throw new Error("the server answered " + response.status);
        return response.json();
      })
      .then((collection) => {
        const found = collection.features;
        searchStatus.textContent = found.length
          ? (found.length === 10 ? "The first 10 places" : found.length + (found.length === 1 ? " place" : " places")) + " named like “" + query + "”."
          : "No place named like “" + query + "” with these filters.";
        found.forEach((feature) => {
          const item = document.createElement("li");
          const button = document.createElement("button");
          button.type = "button";
          const dataset = DATASETS[feature.properties.dataset];
          button.textContent = (feature.properties.name || "(no name yet)") + " — " +
            (RELIGIONS[feature.properties.religion] || feature.properties.religion) +
            (dataset ? ", " + dataset.name : "");
          button.addEventListener("click", () => flyToPlace(feature));
          item.append(button);
          results.append(item);
        });
        if (found.length) flyToPlace(found[0]);
      })
      .catch((error) => { searchStatus.textContent = "The search failed: " + error.message; });
  });

  // --- The panel folds away on small screens ---
  const toggle = document.getElementById("panel-toggle");
  const panelBody = document.getElementById("panel-body");
  function setPanel(open) {
    panelBody.hidden = !open;
    toggle.setAttribute("aria-expanded", String(open));
    toggle.textContent = open ? "Hide panel" : "Show panel";
  }
  toggle.addEventListener("click", () => setPanel(panelBody.hidden));
  if (window.matchMedia("(max-width: 600px)").matches) setPanel(false);

  // --- The districts coloured by a figure of analytics' (places per 1,000 km² unless another
  // is chosen), off until asked; ?figure=NAME switches it on with that figure. ---
  const densityToggle = document.getElementById("density");
  const figureSelect = document.getElementById("figure");
  const densityLegend = document.getElementById("density-legend");
  const densityStatus = document.getElementById("density-status");
  const densityTitle = document.getElementById("density-title");
  const densityBands = document.getElementById("density-bands");
  const densityMissing = document.getElementById("density-missing");
  Object.entries(FIGURES).forEach(([name, figure]) => {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = figure.label;
    figureSelect.append(option);
  });
  const figureParam = params.get("figure");
  if (figureParam !== null && Object.hasOwn(FIGURES, figureParam)) {
    figureSelect.value = figureParam;
    densityToggle.checked = true;
  }

  // Each endpoint fetched once; each figure's states set once, with its classes kept.
  const figureSources = {};
  const drawnFigures = {};
  function fetchSource(source) {
    if (!figureSources[source]) {
      const url = source === "regions" ? "/api/v1/stats/regions/?level=district"
        : "/api/v1/stats/summaries/?level=district";
      figureSources[source] = fetch(url, { headers: { Accept: "application/json" } })
        .then((response) => {
          if (!response.ok) throw new Error("the server answered " + response.status);
          return response.json();
        })
        .then((body) => (source === "regions" ? body : body.results))
        .catch((error) => { delete figureSources[source]; throw error; });
    }
    return figureSources[source];
  }

  // Breaks at the 0, 1/5, 2/5… quantiles of the values (repeats dropped): the lowest value
  // starts the first class, each break the next.
  function quantileBreaks(values) {
    const sorted = values.slice().sort((a, b) => a - b);
    const breaks = [];
    QUANTILE_RAMP.forEach((_, k) => {
      const at = sorted[Math.floor((sorted.length * k) / QUANTILE_RAMP.length)];
      if (!breaks.length || at > breaks[breaks.length - 1]) breaks.push(at);
    });
    return breaks;
  }

  function loadFigure(name) {
    if (drawnFigures[name]) return Promise.resolve(drawnFigures[name]);
    const figure = FIGURES[name];
    const id = figure.id || ((summary) => summary.region.id);
    return fetchSource(figure.source).then((rows) => {
      const values = [];
      let missing = 0;
      rows.forEach((row) => {
        const value = figure.value(row);
        const known = typeof value === "number";
        if (known) values.push(value);
        else missing += 1;
        map.setFeatureState({ source: "regions", sourceLayer: "regions", id: id(row) },
          { [name]: known ? value : NO_FIGURE });
      });
      const banded = name === DEFAULT_FIGURE;
      drawnFigures[name] = {
        values, missing,
        breaks: banded ? DENSITY_BREAKS : quantileBreaks(values),
        ramp: banded ? DENSITY_RAMP : QUANTILE_RAMP,
      };
      return drawnFigures[name];
    });
  }

  function swatchItem(hex, content) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch square";
    swatch.style.background = hex;
    item.append(swatch, content);
    return item;
  }

  function showLegend(name, drawn) {
    const figure = FIGURES[name];
    const scale = figure.scale || 1;
    const format = (v) => (figure.digits === undefined ? String(v * scale)
      : (v * scale).toFixed(figure.digits)) + (figure.suffix || "");
    densityTitle.textContent = figure.title;
    const max = Math.max(...drawn.values);
    densityBands.replaceChildren(...drawn.breaks.map((from, i) => {
      const next = drawn.breaks[i + 1];
      // Fixed bands end open ("2000 or more"); quantile classes at the highest value.
      const range = next !== undefined ? format(from) + "–" + format(next)
        : name === DEFAULT_FIGURE ? format(from) + " or more" : format(from) + "–" + format(max);
      return swatchItem(drawn.ramp[i], range);
    }));
    densityMissing.replaceChildren(swatchItem(NO_FIGURE_COLOUR, "No figure: " + drawn.missing +
      (drawn.missing === 1 ? " district" : " districts") + (figure.why ? " (" + figure.why + ")" : "")));
  }

  function showFigure() {
    const name = figureSelect.value;
    densityLegend.hidden = !densityToggle.checked;
    map.setLayoutProperty("density", "visibility", densityToggle.checked ? "visible" : "none");
    writeUrl();
    if (!densityToggle.checked) return;
    if (!drawnFigures[name]) densityStatus.textContent = "Loading the districts' figures…";
    loadFigure(name)
      .then((drawn) => {
        if (figureSelect.value !== name) return;  // another figure chosen while loading
        map.setPaintProperty("density", "fill-color", figureColour(name, drawn.breaks, drawn.ramp));
        showLegend(name, drawn);
        container.dataset.densityRegions = String(drawn.values.length);
        container.dataset.figure = name;
        densityStatus.textContent = drawn.values.length + " districts with a figure.";
      })
      .catch((error) => { densityStatus.textContent = "The figures could not be loaded: " + error.message; });
  }

  densityToggle.addEventListener("change", showFigure);
  // Choosing a figure shows it: that is what choosing one asks for.
  figureSelect.addEventListener("change", () => {
    densityToggle.checked = true;
    showFigure();
  });
  if (densityToggle.checked) map.once("load", showFigure);

  // --- Sensors (PM2.5): off until switched on, so a visit that does not want them fetches
  // nothing; each switch on fetches the latest readings again. Bands come from the server
  // (UK DAQI for PM2.5); only their colours live here. ---
  const BAND_COLOURS = { low: "#2ca25f", moderate: "#f0b400", high: "#e34a33", very_high: "#8e24aa" };
  const bandColour = ["match", ["get", "band"]];
  Object.entries(BAND_COLOURS).forEach(([band, hex]) => bandColour.push(band, hex));
  bandColour.push("#999999");
  const sensorsToggle = document.getElementById("sensors");
  const sensorLegend = document.getElementById("sensor-legend");
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
    sensorLegend.hidden = !sensorsToggle.checked;
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
