// First paint of the map page, cold: each load in a fresh browser context (empty cache), the
// time from navigation start until a frame shows places (clusters or points), until the map
// is idle, and the bytes transferred. Prints one JSON object; map_paint.py runs it.
//
//   node tests/benchmarks/map_paint.mjs BASE_URL LOADS
import { chromium } from "playwright-core";

const [base, loadsText] = process.argv.slice(2);
const loads = Number(loadsText || 5);
const origin = new URL(base).origin;
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking", "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader"],
});

const runs = [];
let external = 0;
for (let i = 0; i < loads; i += 1) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  // Requests are watched, not intercepted: interception holds each one for a round trip
  // to the driver and slowed the first paint by seconds.
  context.on("request", (request) => {
    const url = new URL(request.url());
    if (url.protocol.startsWith("http") && url.origin !== origin) external += 1;
  });
  // Bytes from the network events: tiles are fetched by MapLibre's workers, whose requests
  // the page's resource timing does not list.
  // Sizes are asked for after the load: asking while it runs slowed it.
  const finished = [];
  context.on("requestfinished", (request) => finished.push(request));
  const page = await context.newPage();
  // The page itself notes the first frame that shows places, and the first idle after it.
  // A frame shows places when MapLibre reports a cluster or place rendered (its feature
  // index) and the canvas holds a colour other than the basemap's land and water at that
  // feature's pixel, read in the "render" event, before the frame is handed on.
  // Not map.isStyleLoaded(): it waits for every source, the basemap's two megabytes of
  // GeoJSON included, which the page loads after the places on purpose.
  await page.addInitScript(() => {
    const BASEMAP = [[0xc6, 0xdb, 0xea], [0xf5, 0xf2, 0xea]];  // water, land (basemap/style.js)
    const pixel = new Uint8Array(4);
    const drawn = (map) => {
      let features;
      try {
        features = map.queryRenderedFeatures({ layers: ["clusters", "places"] });
      } catch {
        return false;  // the style itself is not read yet
      }
      const canvas = map.getCanvas();
      // The context MapLibre made (asking again returns it), and its own pixel ratio.
      const gl = canvas.getContext("webgl2") || canvas.getContext("webgl");
      const ratio = gl.drawingBufferWidth / canvas.clientWidth;
      return features.slice(0, 20).some((feature) => {
        const point = map.project(feature.geometry.coordinates);
        const x = Math.round(point.x * ratio);
        const y = gl.drawingBufferHeight - 1 - Math.round(point.y * ratio);
        if (x < 0 || y < 0 || x >= gl.drawingBufferWidth || y >= gl.drawingBufferHeight) return false;
        gl.readPixels(x, y, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixel);
        // Alpha 0 would be a cleared buffer, not a place.
        return pixel[3] > 0 && BASEMAP.every((c) => Math.abs(c[0] - pixel[0]) + Math.abs(c[1] - pixel[1]) + Math.abs(c[2] - pixel[2]) > 24);
      });
    };
    const watch = () => {
      const map = window.placesMap;
      if (!map) { requestAnimationFrame(watch); return; }
      const onRender = () => {
        if (window.firstPointsMs !== undefined || !drawn(map)) return;
        window.firstPointsMs = performance.now();
        window.firstPixel = Array.from(pixel);
        map.off("render", onRender);
        map.once("idle", () => { window.idleMs = performance.now(); });
      };
      map.on("render", onRender);
    };
    requestAnimationFrame(watch);
    // What this benchmark timed before 2026-12-04, for comparison in the same load: the first
    // frame with places rendered and every source loaded (the basemap's included).
    const everything = () => {
      const map = window.placesMap;
      if (map && map.isStyleLoaded() &&
          map.queryRenderedFeatures({ layers: ["clusters", "places"] }).length > 0) {
        window.allSourcesMs = performance.now();
        return;
      }
      requestAnimationFrame(everything);
    };
    requestAnimationFrame(everything);
  });
  await page.goto(base + "/map/", { waitUntil: "commit", timeout: 120000 });
  await page.waitForFunction(() => window.idleMs !== undefined && window.allSourcesMs !== undefined,
    null, { timeout: 120000 });
  const firstPoints = await page.evaluate(() => window.firstPointsMs);
  const run = await page.evaluate((firstPointsMs) => {
    const navigation = performance.getEntriesByType("navigation")[0];
    const library = performance.getEntriesByType("resource").filter((e) => e.name.includes("maplibre-gl"))[0];
    return {
      first_points_ms: Math.round(firstPointsMs),
      first_pixel: window.firstPixel,
      all_sources_ms: Math.round(window.allSourcesMs),
      idle_ms: Math.round(window.idleMs),
      dom_content_loaded_ms: Math.round(navigation.domContentLoadedEventEnd),
      maplibre_loaded_ms: library ? Math.round(library.responseEnd) : null,
    };
  }, firstPoints);
  const byKind = {};
  let bytes = 0;
  const transfers = await Promise.all(finished.map((request) => request.sizes().then((sizes) => ({
    path: new URL(request.url()).pathname, bytes: sizes.responseBodySize + sizes.responseHeadersSize,
  }))));
  for (const { path, bytes: size } of transfers) {
    const kind = path.endsWith(".js") ? "javascript" : path.endsWith(".css") ? "css"
      : path.includes("/basemap/") ? "basemap" : path.startsWith("/tiles/") ? "tiles"
        : path === "/map/" ? "html" : "other";
    byKind[kind] = (byKind[kind] || 0) + size;
    bytes += size;
  }
  Object.assign(run, { requests: transfers.length, bytes: bytes, bytes_by_kind: byKind });
  runs.push(run);
  await context.close();
}
await browser.close();
process.stdout.write(JSON.stringify({ runs, external_requests: external }) + "\n");
