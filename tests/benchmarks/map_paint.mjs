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
  // The page itself notes the first animation frame that shows places, and the first idle.
  await page.addInitScript(() => {
    const check = () => {
      const map = window.placesMap;
      if (map && map.isStyleLoaded() &&
          map.queryRenderedFeatures({ layers: ["clusters", "places"] }).length > 0) {
        window.firstPointsMs = performance.now();
        map.once("idle", () => { window.idleMs = performance.now(); });
        return;
      }
      requestAnimationFrame(check);
    };
    requestAnimationFrame(check);
  });
  await page.goto(base + "/map/", { waitUntil: "commit", timeout: 120000 });
  await page.waitForFunction(() => window.idleMs !== undefined, null, { timeout: 120000 });
  const firstPoints = await page.evaluate(() => window.firstPointsMs);
  const run = await page.evaluate((firstPointsMs) => {
    const navigation = performance.getEntriesByType("navigation")[0];
    const library = performance.getEntriesByType("resource").filter((e) => e.name.includes("maplibre-gl"))[0];
    return {
      first_points_ms: Math.round(firstPointsMs),
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
