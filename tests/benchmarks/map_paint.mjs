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
  await context.route("**/*", (route) => {
    if (new URL(route.request().url()).origin === origin) return route.continue();
    external += 1;
    return route.abort();
  });
  // Bytes from the network events: tiles are fetched by MapLibre's workers, whose requests
  // the page's resource timing does not list.
  const transfers = [];
  context.on("requestfinished", (request) => {
    transfers.push(request.sizes().then((sizes) => ({
      path: new URL(request.url()).pathname, bytes: sizes.responseBodySize + sizes.responseHeadersSize,
    })));
  });
  const page = await context.newPage();
  await page.goto(base + "/map/", { waitUntil: "commit", timeout: 120000 });
  // Checked on every animation frame: the first frame with places drawn.
  await page.waitForFunction(() => {
    const map = window.placesMap;
    return map && map.isStyleLoaded() &&
      map.queryRenderedFeatures({ layers: ["clusters", "places"] }).length > 0;
  }, null, { polling: "raf", timeout: 120000 });
  const firstPoints = await page.evaluate(() => performance.now());
  await page.evaluate(() => new Promise((resolve) => {
    const map = window.placesMap;
    if (map.loaded() && !map.isMoving()) resolve(); else map.once("idle", () => resolve());
  }));
  const run = await page.evaluate((firstPointsMs) => {
    const navigation = performance.getEntriesByType("navigation")[0];
    const library = performance.getEntriesByType("resource").filter((e) => e.name.includes("maplibre-gl"))[0];
    return {
      first_points_ms: Math.round(firstPointsMs),
      idle_ms: Math.round(performance.now()),
      dom_content_loaded_ms: Math.round(navigation.domContentLoadedEventEnd),
      maplibre_loaded_ms: library ? Math.round(library.responseEnd) : null,
    };
  }, firstPoints);
  const byKind = {};
  let bytes = 0;
  for (const { path, bytes: size } of await Promise.all(transfers)) {
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
