// Drives Debian's Chromium through the admin's analytics dashboard and prints what each chart
// drew as one JSON report; tests/analytics/test_dashboard_browser.py runs it against a live
// server and compares it with the statistics API. Nothing here judges: it only looks.
//
//   node tests/browser/dashboard.mjs SCENARIO.json
//   (SCENARIO: {"base": "http://127.0.0.1:PORT", "session": {"name": ..., "value": ...}, ...})
//
// Every wait is for a state (a chart drawn, the map idle), never for a time.
import { readFileSync } from "node:fs";
import { launch, watchedPage } from "./watched.mjs";

const scenario = JSON.parse(readFileSync(process.argv[2], "utf-8"));
const base = new URL(scenario.base);
const WAIT = { timeout: scenario.timeout_ms || 90000 };
const report = { console_errors: [], external_requests: [], failed_requests: [], steps: {} };
const steps = report.steps;

const browser = await launch(scenario, base);

// What a chart drew: its labels, each dataset's numbers, how many bars or points it laid out
// with a visible size, and how many pixels of its canvas are painted.
const chartState = (page, id) => page.evaluate((name) => {
  const canvas = document.getElementById(name + "-chart");
  const chart = Chart.getChart(canvas);
  if (!chart) return null;
  const context = canvas.getContext("2d");
  const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < rgba.length; i += 4) if (rgba[i] > 0) painted += 1;
  return {
    type: chart.config.type,
    labels: chart.data.labels,
    datasets: chart.data.datasets.map((dataset, i) => {
      const elements = chart.getDatasetMeta(i).data;
      const visible = elements.filter((el, j) => {
        if (chart.config.type !== "bar") return Number.isFinite(el.x) && Number.isFinite(el.y);
        // A bar of a positive value has a length along its value axis.
        const length = chart.options.indexAxis === "y" ? Math.abs(el.x - el.base) : Math.abs(el.y - el.base);
        return dataset.data[j] > 0 ? length > 0 : true;
      });
      return { label: dataset.label, code: dataset.code || null, data: dataset.data,
        elements: elements.length, visible: visible.length };
    }),
    painted: painted,
    pixels: canvas.width * canvas.height,
  };
}, id);

async function mapIdle(page) {
  await page.waitForFunction(() => window.placesDashboard && window.placesDashboard.map.isStyleLoaded(), null, WAIT);
  await page.evaluate(() => new Promise((resolve) => {
    const map = window.placesDashboard.map;
    map.once("idle", () => resolve());
    map.triggerRepaint();
  }));
}

// The districts the map drew, each with the figure its feature state holds, and the painted
// colours of the map's canvas (a screenshot, decoded by the page's own canvas).
async function choropleth(page) {
  await mapIdle(page);
  const drawn = await page.evaluate(() => {
    const dashboard = window.placesDashboard;
    const seen = {};
    dashboard.map.queryRenderedFeatures({ layers: ["choropleth"] }).forEach((feature) => {
      seen[feature.id] = feature.state.value === undefined ? null : feature.state.value;
    });
    return {
      figure: dashboard.drawn.choropleth.figure,
      values: dashboard.drawn.choropleth.values,
      breaks: dashboard.drawn.choropleth.breaks,
      rendered: seen,
      legend: [...document.querySelectorAll("#choropleth-legend li")].map((li) => li.textContent),
      status: document.getElementById("choropleth-status").textContent,
    };
  });
  const png = (await page.locator("#choropleth canvas").screenshot()).toString("base64");
  drawn.colours = await page.evaluate(async (data) => {
    const image = new Image();
    image.src = "data:image/png;base64," + data;
    await image.decode();
    const canvas = document.createElement("canvas");
    canvas.width = image.width;
    canvas.height = image.height;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const rgba = context.getImageData(0, 0, image.width, image.height).data;
    // The darkest band (#253494 at 0.8 over land) is blue well above its red and green.
    let darkest = 0;
    const distinct = new Set();
    for (let i = 0; i < rgba.length; i += 4) {
      if (rgba[i + 2] - rgba[i] > 80 && rgba[i + 2] - rgba[i + 1] > 40 && rgba[i] < 100) darkest += 1;
      distinct.add((rgba[i] >> 4) * 256 + (rgba[i + 1] >> 4) * 16 + (rgba[i + 2] >> 4));
    }
    return { darkest: darkest, distinct: distinct.size, pixels: image.width * image.height };
  }, png);
  return drawn;
}

try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 }, reducedMotion: "reduce" });
  const page = await watchedPage(context, base, report);

  // 1. Signed in (the scenario's session cookie), the admin index and the summaries' list
  // lead to the dashboard.
  await context.addCookies([{ name: scenario.session.name, value: scenario.session.value,
    domain: base.hostname, path: "/", httpOnly: true }]);
  await page.goto(new URL("/admin/", base).href, WAIT);
  steps.index_links = await page.evaluate(() =>
    [...document.querySelectorAll("#dashboards a")].map((a) => [a.textContent, a.getAttribute("href")]));
  await page.goto(new URL("/admin/analytics/regionsummary/", base).href, WAIT);
  steps.changelist_links = await page.evaluate(() =>
    [...document.querySelectorAll(".object-tools a")].map((a) => [a.textContent.trim(), a.getAttribute("href")]));

  // 2. The dashboard: every chart drawn.
  await page.goto(new URL(scenario.path, base).href, { waitUntil: "load", ...WAIT });
  await page.waitForFunction(() => {
    const drawn = window.placesDashboard && window.placesDashboard.drawn;
    return drawn && drawn.choropleth && drawn.religions && drawn.decades && drawn.sensor;
  }, null, WAIT);
  steps.choropleth = await choropleth(page);
  steps.religions = { ...(await chartState(page, "religions")), drawn: await page.evaluate(() => window.placesDashboard.drawn.religions) };
  steps.decades = { ...(await chartState(page, "decades")), drawn: await page.evaluate(() => window.placesDashboard.drawn.decades) };
  steps.sensor = { ...(await chartState(page, "sensor")), drawn: await page.evaluate(() => window.placesDashboard.drawn.sensor) };
  if (scenario.screenshots) await page.screenshot({ path: `${scenario.screenshots}/dashboard.png`, fullPage: true });

  // 3. Another figure recolours the map.
  await page.selectOption("#figure", scenario.second_figure);
  await page.waitForFunction((figure) => window.placesDashboard.drawn.choropleth.figure === figure,
    scenario.second_figure, WAIT);
  steps.second_figure = await choropleth(page);

  // 4. Hours instead of days for the sensor.
  await page.selectOption("#sensor-interval", "hour");
  await page.waitForFunction(() => window.placesDashboard.drawn.sensor.interval === "hour", null, WAIT);
  steps.sensor_hourly = { ...(await chartState(page, "sensor")), drawn: await page.evaluate(() => window.placesDashboard.drawn.sensor) };

  // 5. Selecting a bar shows that region's founding decades.
  // The second region's bar, at the middle of its longest religion.
  await page.locator("#religions-chart").scrollIntoViewIfNeeded();
  const target = await page.evaluate(() => {
    const chart = Chart.getChart(document.getElementById("religions-chart"));
    const longest = chart.data.datasets.reduce((best, d, i) => (d.data[1] > chart.data.datasets[best].data[1] ? i : best), 0);
    const bar = chart.getDatasetMeta(longest).data[1];
    const box = chart.canvas.getBoundingClientRect();
    return { x: box.left + (bar.x + bar.base) / 2, y: box.top + bar.y, region: window.placesDashboard.drawn.religions.regions[1] };
  });
  await page.mouse.click(target.x, target.y);
  await page.waitForFunction((region) => window.placesDashboard.drawn.decades.region === region, target.region, WAIT);
  steps.decades_of_bar = { ...(await chartState(page, "decades")), drawn: await page.evaluate(() => window.placesDashboard.drawn.decades) };
  steps.errors = await page.evaluate(() => window.placesDashboard.errors);
} catch (error) {
  report.error = String(error && error.stack || error);
  // What the page got to, for the failure's message.
  for (const page of browser.contexts().flatMap((c) => c.pages())) {
    report.page_state = await page.evaluate(() => ({
      url: location.href,
      drawn: window.placesDashboard ? Object.keys(window.placesDashboard.drawn) : null,
      errors: window.placesDashboard ? window.placesDashboard.errors : null,
      status: (document.getElementById("dashboard-status") || {}).textContent,
    })).catch((e) => String(e));
  }
} finally {
  await browser.close();
  process.stdout.write(JSON.stringify(report) + "\n");
}
