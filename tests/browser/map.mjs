// Drives Debian's Chromium through the map page and the place page, as a person would, and
// prints what it saw as one JSON report; tests/places/test_map_browser.py runs it against a
// live server and asserts. Nothing here judges: it only looks, clicks and measures.
//
//   node tests/browser/map.mjs SCENARIO.json    (SCENARIO: {"base": "http://127.0.0.1:PORT", ...})
//
// Every wait is for a state (the map idle, a popup filled), never for a time: the machine may
// be loaded. Requests to any other origin are aborted and listed; console errors are listed.
import { readFileSync } from "node:fs";
import { launch, watchedPage } from "./watched.mjs";

const scenario = JSON.parse(readFileSync(process.argv[2], "utf-8"));
const base = new URL(scenario.base);
const WAIT = { timeout: scenario.timeout_ms || 90000 };
const report = { console_errors: [], external_requests: [], failed_requests: [] };

const browser = await launch(scenario, base);

async function newPage(viewport) {
  // Reduced motion, as some people ask for: MapLibre jumps instead of flying, which keeps
  // the run short; the page must work the same either way.
  const context = await browser.newContext({
    viewport: viewport || { width: 1200, height: 800 }, reducedMotion: "reduce",
  });
  return watchedPage(context, base, report);
}

// The next "idle" of the map: every tile and source loaded, no move, the last frame drawn.
async function idle(page) {
  await page.waitForFunction(() => window.placesMap && window.placesMap.isStyleLoaded(), null, WAIT);
  await page.evaluate(() => new Promise((resolve) => {
    const map = window.placesMap;
    map.once("idle", () => resolve());
    map.triggerRepaint();
  }));
}

async function jump(page, center, zoom) {
  await page.evaluate(([c, z]) => {
    document.querySelectorAll(".maplibregl-popup").forEach((p) => p.remove());
    window.placesMap.jumpTo({ center: c, zoom: z });
  }, [center, zoom]);
  await idle(page);
}

// After a load: idle, and on the map page idle again once the cluster counts (added after
// the first idle) are drawn.
async function settle(page) {
  await idle(page);
  if (await page.evaluate(() => Boolean(document.getElementById("map-config")))) {
    await page.waitForFunction(() => window.placesMap.getLayer("cluster-counts"), null, WAIT);
    await idle(page);
  }
}

async function open(page, path) {
  await page.goto(new URL(path, base).href, { waitUntil: "load", ...WAIT });
  await settle(page);
}

// With scenario.screenshots (a folder), each view is kept as a PNG for a person to look at.
async function keep(page, name) {
  if (scenario.screenshots) await page.screenshot({ path: `${scenario.screenshots}/${name}.png` });
}

const view = (page) => page.evaluate(() => {
  const map = window.placesMap;
  const c = map.getCenter();
  return { lon: c.lng, lat: c.lat, zoom: map.getZoom(), bounds: map.getBounds().toArray(),
    url: location.pathname + location.search };
});

const drawn = (page) => page.evaluate(() => {
  const map = window.placesMap;
  const features = map.queryRenderedFeatures({ layers: ["clusters"] });
  const biggest = features.reduce((a, f) => (!a || f.properties.count > a.properties.count ? f : a), null);
  const label = biggest && (biggest.properties.count >= 10000
    ? Math.round(biggest.properties.count / 1000) + "k" : String(biggest.properties.count));
  return {
    places: Number(document.getElementById("map").dataset.drawnPlaces),
    symbols: Number(document.getElementById("map").dataset.drawnFeatures),
    clusters: features.length,
    biggest_cluster: biggest && { count: biggest.properties.count, label: label,
      label_drawn: map.hasImage("count:" + label) },
    status: document.getElementById("status").textContent,
  };
});

// Pixels of the page's screenshot by kind: a place's blue (Christian, most of the data),
// water and land (decoded by the page's own canvas: no image library needed here).
async function pixels(page) {
  const png = (await page.screenshot()).toString("base64");
  return page.evaluate(async (data) => {
    const image = new Image();
    image.src = "data:image/png;base64," + data;
    await image.decode();
    const canvas = document.createElement("canvas");
    canvas.width = image.width;
    canvas.height = image.height;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const rgba = context.getImageData(0, 0, image.width, image.height).data;
    const near = (i, [r, g, b]) => Math.abs(rgba[i] - r) + Math.abs(rgba[i + 1] - g) + Math.abs(rgba[i + 2] - b) < 12;
    const counts = { total: image.width * image.height, place_blue: 0, water: 0, land: 0 };
    for (let i = 0; i < rgba.length; i += 4) {
      if (rgba[i + 2] - rgba[i] > 90 && rgba[i + 2] > 120) counts.place_blue += 1;
      else if (near(i, [0xc6, 0xdb, 0xea])) counts.water += 1;
      else if (near(i, [0xf5, 0xf2, 0xea])) counts.land += 1;
    }
    return counts;
  }, png);
}

async function clickAt(page, lon, lat) {
  const point = await page.evaluate(([x, y]) => window.placesMap.project([x, y]), [lon, lat]);
  const box = await page.locator("#map canvas").boundingBox();
  await page.mouse.click(box.x + point.x, box.y + point.y);
  return popup(page);
}

async function popup(page) {
  await page.waitForFunction(() => {
    const box = document.querySelector(".places-popup");
    return box && !/Loading…/.test(box.textContent);
  }, null, WAIT);
  return page.evaluate(() => {
    const box = document.querySelector(".places-popup");
    return {
      text: box.innerText,
      places: box.querySelectorAll("section.place").length,
      headings: [...box.querySelectorAll("section.place > h2, section.place > h3")].map((h) => h.textContent),
      links: [...box.querySelectorAll("a")].map((a) => a.getAttribute("href")),
    };
  });
}

// Hovers the biggest cluster in view: what its hover lists (religion, count, swatch colour)
// and what the tile says of the cluster under the pointer.
async function hoverBiggestCluster(page) {
  const point = await page.evaluate(() => {
    const map = window.placesMap;
    const clusters = map.queryRenderedFeatures({ layers: ["clusters"] });
    const biggest = clusters.reduce((a, f) => (!a || f.properties.count > a.properties.count ? f : a), null);
    const p = map.project(biggest.geometry.coordinates);
    return { x: p.x, y: p.y };
  });
  const box = await page.locator("#map canvas").boundingBox();
  await page.mouse.move(box.x + point.x, box.y + point.y);
  await page.waitForSelector(".cluster-religions li", WAIT);
  const seen = await page.evaluate((at) => {
    const under = window.placesMap.queryRenderedFeatures([at.x, at.y], { layers: ["clusters"] })[0];
    const hover = document.querySelector(".cluster-religions");
    return {
      tile: { count: under.properties.count, religions: under.properties.religions },
      title: hover.querySelector("strong").textContent,
      items: [...hover.querySelectorAll("li")].map((li) => ({
        text: li.textContent, colour: getComputedStyle(li.querySelector(".swatch")).backgroundColor,
      })),
    };
  }, point);
  await page.mouse.move(box.x + box.width - 2, box.y + box.height - 2);
  return seen;
}

// The offline basemap's water near a point: rivers within a few pixels, lakes under it.
const waterAt = (page, lon, lat) => page.evaluate(([x, y]) => {
  const map = window.placesMap;
  const p = map.project([x, y]);
  const near = [[p.x - 8, p.y - 8], [p.x + 8, p.y + 8]];
  return {
    rivers: map.queryRenderedFeatures(near, { layers: ["rivers"] }).length,
    lakes: map.queryRenderedFeatures([p.x, p.y], { layers: ["lakes"] }).length,
    zoom: map.getZoom(),
  };
}, [lon, lat]);

const steps = {};
const started = Date.now();
const mark = (name) => { report.timings_ms[name] = Date.now() - started; };
report.timings_ms = {};

// The districts coloured by the figure NAME: the choice, the legend, and the feature state of
// every district drawn (the value the fill is painted by).
async function figureSeen(page, name) {
  await page.waitForFunction((n) => document.getElementById("map").dataset.figure === n
    || /could not/.test(document.getElementById("density-status").textContent), name, WAIT);
  await idle(page);
  return page.evaluate((n) => {
    const map = window.placesMap;
    const states = {};
    map.queryRenderedFeatures({ layers: ["density"] }).forEach((f) => {
      const value = map.getFeatureState({ source: "regions", sourceLayer: "regions", id: f.id })[n];
      if (value !== undefined) states[f.id] = value;
    });
    const items = (id) => [...document.querySelectorAll(`#${id} li`)].map((li) => li.textContent);
    return {
      chosen: document.getElementById("figure").value,
      checked: document.getElementById("density").checked,
      visibility: map.getLayoutProperty("density", "visibility"),
      fill: JSON.stringify(map.getPaintProperty("density", "fill-color")),
      title: document.getElementById("density-title").textContent,
      legend: items("density-bands"), missing: items("density-missing"),
      status: document.getElementById("density-status").textContent,
      url: location.pathname + location.search, states,
    };
  }, name);
}

// A figure chosen from the list (found by its label), then the page reloaded.
async function figureRun(page, name) {
  await open(page, "/map/");
  const select = page.getByLabel("Figure", { exact: true });
  await select.focus();
  const focused = await page.evaluate(() => document.activeElement.id);
  await select.selectOption(name);
  const chosen = await figureSeen(page, name);
  await keep(page, "figure");
  await page.reload({ waitUntil: "load" });
  await settle(page);
  return { focused, chosen, reloaded: await figureSeen(page, name) };
}

// scenario.only = "figure": that step alone, for its test, which needs none of the others.
if (scenario.only === "figure") {
  try {
    steps.figure = await figureRun(await newPage(), scenario.figure);
  } catch (error) {
    report.error = String(error && error.stack || error);
  } finally {
    report.steps = steps;
    await browser.close();
    // Written before leaving: the rest of the script is not run.
    await new Promise((resolve) => process.stdout.write(JSON.stringify(report) + "\n", resolve));
  }
  process.exit(0);
}
try {
  const page = await newPage();

  // 1. A cold load: WebGL, drawn pixels, cluster counts with their labels.
  await open(page, "/map/?dataset=" + scenario.dataset);
  steps.webgl = await page.evaluate(() => {
    const gl = window.placesMap.painter.context.gl;
    return { version: gl.getParameter(gl.VERSION), webgl2: gl instanceof WebGL2RenderingContext };
  });
  steps.overview = { ...(await drawn(page)), ...(await view(page)), pixels: await pixels(page) };
  await keep(page, "overview");
  // Keyboard: the first Tab reaches the skip link, which leads to the search box.
  await page.keyboard.press("Tab");
  steps.first_tab = await page.evaluate(() => document.activeElement.textContent);
  await page.keyboard.press("Enter");
  steps.after_skip = await page.evaluate(() => document.activeElement.id);
  // A cluster's hover lists its religions; the list of what is in view gives the same.
  steps.cluster_hover = await hoverBiggestCluster(page);
  steps.cluster_list = await page.evaluate(() =>
    [...document.querySelectorAll("#in-view-list button.cluster")].map((b) => b.textContent));

  mark("overview");
  // 2. A filter changes the count, and the URL.
  await page.selectOption("#religion", scenario.religion);
  await idle(page);
  steps.filtered = { ...(await drawn(page)), ...(await view(page)) };
  await page.selectOption("#religion", "");
  await idle(page);
  steps.unfiltered = { ...(await drawn(page)), ...(await view(page)) };

  // Datasets switched on and off, one box each: unticking one changes what is drawn and the
  // URL, and a reload keeps both.
  if (scenario.second_dataset) {
    const datasets = async () => ({
      ...(await drawn(page)), ...(await view(page)),
      boxes: await page.evaluate(() => [...document.querySelectorAll("#datasets input")].map((box) => {
        const source = document.getElementById(box.id + "-source");
        return { slug: box.value, checked: box.checked, source: source ? source.textContent : "" };
      })),
      attribution: await page.evaluate(() => document.querySelector(".maplibregl-ctrl-attrib").textContent),
    });
    await open(page, "/map/");
    steps.datasets_all = await datasets();
    await page.uncheck("#dataset-" + scenario.second_dataset);
    await idle(page);
    steps.datasets_one_off = await datasets();
    await page.reload({ waitUntil: "load" });
    await settle(page);
    steps.datasets_reloaded = await datasets();
    // Every box unticked: nothing drawn, and a reload keeps it so.
    for (const box of await page.locator("#datasets input").all()) await box.uncheck();
    await idle(page);
    steps.datasets_none = await datasets();
    await page.reload({ waitUntil: "load" });
    await settle(page);
    steps.datasets_none_reloaded = await datasets();
    mark("datasets");
  }

  // The density of places by district from the analytics API, drawn as a choropleth.
  await page.check("#density");
  await page.waitForFunction(() => document.getElementById("map").dataset.densityRegions
    || /could not/.test(document.getElementById("density-status").textContent), null, WAIT);
  await idle(page);
  steps.density = await page.evaluate(() => {
    const map = window.placesMap;
    const drawn = map.queryRenderedFeatures({ layers: ["density"] });
    const withFigure = drawn.filter((f) => typeof map.getFeatureState(
      { source: "regions", sourceLayer: "regions", id: f.id }).density === "number");
    return {
      regions: Number(document.getElementById("map").dataset.densityRegions || 0),
      status: document.getElementById("density-status").textContent,
      drawn: drawn.length, with_figure: withFigure.length,
      legend: [...document.querySelectorAll("#density-bands li")].map((li) => li.textContent),
    };
  });
  await page.uncheck("#density");
  // The sensors layer, switched on over Aberdeen: circles in their PM2.5 band's colour.
  if (scenario.sensors) {
    await jump(page, scenario.sensors.center, 11);
    await page.check("#sensors");
    await page.waitForFunction(() => /with a reading|could not/.test(
      document.getElementById("sensor-status").textContent), null, WAIT);
    await idle(page);
    steps.sensors = await page.evaluate(() => ({
      status: document.getElementById("sensor-status").textContent,
      legend: [...document.querySelectorAll("#sensor-bands li")].map((li) => li.textContent),
      drawn: window.placesMap.queryRenderedFeatures({ layers: ["sensors"] }).map((f) => ({
        sensor: f.properties.sensor, pm2_5: f.properties.pm2_5, band: f.properties.band,
        colour: f.layer.paint["circle-color"],
      })),
    }));
    await page.uncheck("#sensors");
  }
  mark("filter");
  // Water on the offline basemap: the Thames in London, Lake Geneva, at a regional zoom and a
  // close one (the basemap's tiles stop at 10 and are drawn larger from there).
  steps.water = {};
  for (const [name, lon, lat] of [["thames", -0.144, 51.485], ["geneva", 6.55, 46.45]]) {
    for (const zoom of [7, 12]) {
      await jump(page, [lon, lat], zoom);
      steps.water[name + "_z" + zoom] = await waterAt(page, lon, lat);
    }
    await keep(page, "water_" + name);
  }
  // 3. A shared link shows the same view, before and after a reload; a move rewrites it.
  const shared = scenario.shared_url;
  await open(page, shared);
  steps.shared = await view(page);
  await page.reload({ waitUntil: "load" });
  await settle(page);
  steps.shared_reloaded = await view(page);
  await page.evaluate(() => window.placesMap.jumpTo({ center: [-1.54321, 53.79876], zoom: 9.25 }));
  await idle(page);
  steps.moved = await view(page);
  await page.reload({ waitUntil: "load" });
  await settle(page);
  steps.moved_reloaded = await view(page);

  mark("shared");
  // 4. Places on one spot: the popup lists them all.
  const stacked = scenario.stacked;
  // On the same page from here on (each load costs seconds on a loaded machine): the
  // religion filter off, the dataset's kept, and the map moved.
  await page.selectOption("#religion", "");
  await jump(page, [stacked.lon, stacked.lat], 17);
  steps.stacked_popup = await clickAt(page, stacked.lon, stacked.lat);
  await keep(page, "stacked");
  // 7. The list of what is in view, for screen readers and keyboards.
  await page.locator("#in-view summary").click();
  steps.in_view_list = await page.locator("#in-view-list li").allInnerTexts();

  mark("stacked");
  // 5. A known place: labels, denomination, dataset and licence, links.
  const known = scenario.known;
  await jump(page, [known.lon, known.lat], 17);
  steps.known_popup = await clickAt(page, known.lon, known.lat);

  mark("known");
  // 6. Search by name flies to the first match and opens its popup; coordinates fly there.
  await jump(page, [-1.6, 53.2], 5);
  await page.fill("#search-input", scenario.search);
  await page.press("#search-input", "Enter");
  steps.search_popup = await popup(page);
  await idle(page);
  steps.search_view = await view(page);
  await keep(page, "search");
  steps.search_results = await page.locator("#search-results li").allInnerTexts();
  await page.fill("#search-input", "51.51380, -0.09840");
  await page.press("#search-input", "Enter");
  await page.waitForFunction(() => /Showing/.test(document.getElementById("search-status").textContent), null, WAIT);
  await page.evaluate(() => new Promise((resolve) => {
    const map = window.placesMap;
    if (!map.isMoving()) resolve(); else map.once("moveend", () => resolve());
  }));
  await idle(page);
  steps.coordinates_view = await view(page);

  mark("search");
  // 8. The place page: server-rendered facts and a small map.
  await open(page, `/places/${known.id}/`);
  await keep(page, "place_page");
  steps.place_page = await page.evaluate(() => ({
    title: document.querySelector("h1").textContent,
    nearby: document.querySelectorAll(".nearby li a").length,
    history_rows: document.querySelectorAll(".history tbody tr").length,
    drawn: window.placesMap.queryRenderedFeatures({ layers: ["places"] }).length,
  }));

  mark("place_page");
  // 10. The admin's location widget: the map's basemap; a click on the marker leaves the
  // point, a click on the map moves it there, typed coordinates move it. Nothing is saved.
  if (scenario.curator) {
    await page.goto(new URL(`/admin/login/?next=/admin/places/place/${known.id}/change/`, base).href,
      { waitUntil: "load", ...WAIT });
    await page.fill("#id_username", scenario.curator.username);
    await page.fill("#id_password", scenario.curator.password);
    await Promise.all([page.waitForURL(/\/change\/$/, WAIT), page.click("input[type=submit]")]);
    await page.waitForFunction(() => window.placesLocationMaps && window.placesLocationMaps.id_location, null, WAIT);
    const widgetIdle = () => page.evaluate(() => new Promise((resolve) => {
      const map = window.placesLocationMaps.id_location.map;
      map.once("idle", () => resolve());
      map.triggerRepaint();
    }));
    const widgetState = () => page.evaluate(() => {
      const { marker } = window.placesLocationMaps.id_location;
      return { value: document.getElementById("id_location").value, marker: marker.getLngLat(),
        longitude: document.getElementById("id_longitude").value,
        latitude: document.getElementById("id_latitude").value };
    });
    const mapBox = page.locator("#id_location_map");
    await mapBox.scrollIntoViewIfNeeded();
    await widgetIdle();
    const widget = {};
    widget.layers = await page.evaluate(() => window.placesLocationMaps.id_location.map.getStyle().layers.map((l) => l.id));
    // The basemap fills in after the places' tiles: wait for the land to be drawn.
    await page.waitForFunction(() => window.placesLocationMaps.id_location.map
      .queryRenderedFeatures({ layers: ["land"] }).length > 0, null, WAIT);
    widget.land_drawn = await page.evaluate(() => window.placesLocationMaps.id_location.map
      .queryRenderedFeatures({ layers: ["land"] }).length);
    widget.start = await widgetState();
    await keep(page, "location_widget");
    const pin = await page.evaluate(() => {
      const r = window.placesLocationMaps.id_location.marker.getElement().getBoundingClientRect();
      return { x: r.x + r.width / 2, y: r.y + r.height / 3 };
    });
    await page.mouse.click(pin.x, pin.y);
    widget.marker_clicked = await widgetState();
    const box = await page.locator("#id_location_map canvas").boundingBox();
    const spot = { x: box.width / 2 + 90, y: box.height / 2 + 40 };
    await page.mouse.click(box.x + spot.x, box.y + spot.y);
    widget.map_clicked = await widgetState();
    widget.map_clicked.at = await page.evaluate((p) => window.placesLocationMaps.id_location.map.unproject([p.x, p.y]), spot);
    await page.fill("#id_longitude", "-0.1");
    await page.fill("#id_latitude", "51.5");
    widget.typed = await widgetState();
    steps.location_widget = widget;
    mark("location_widget");
    // Signed in as a curator, a place's popup links to its admin page.
    await open(page, `/map/?lat=${known.lat}&lon=${known.lon}&z=17`);
    steps.curator_popup = await clickAt(page, known.lon, known.lat);
    mark("curator_popup");
  }
  // 9. A phone: the panel starts folded and opens from its button.
  const phone = await newPage({ width: 390, height: 740 });
  await open(phone, "/map/");
  steps.phone = await phone.evaluate(() => ({
    expanded: document.getElementById("panel-toggle").getAttribute("aria-expanded"),
    body_hidden: document.getElementById("panel-body").hidden,
  }));
  await keep(phone, "phone");
  await phone.click("#panel-toggle");
  steps.phone.after_click = await phone.evaluate(() => document.getElementById("panel-body").hidden);
  mark("phone");
} catch (error) {
  report.error = String(error && error.stack || error);
} finally {
  report.steps = steps;
  await browser.close();
  process.stdout.write(JSON.stringify(report) + "\n");
}
