// What the browser runs share: Debian's Chromium launched with the developers' guide's flags,
// and a page whose console errors, failed requests and requests to other hosts go into the
// run's report (tests/browser/map.mjs, dashboard.mjs).
import { chromium } from "playwright-core";

// No sandbox (root in CI), no background traffic, WebGL through SwiftShader (no GPU here).
// Anything not for the test server goes to a proxy that is not there and fails at once:
// nothing leaves the machine, and no request waits on an interception round trip.
export function launch(scenario, base) {
  return chromium.launch({
    executablePath: scenario.chromium || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-background-networking", "--use-angle=swiftshader",
      "--enable-unsafe-swiftshader",
      "--proxy-server=http://127.0.0.1:9", `--proxy-bypass-list=${base.hostname}`],
  });
}

// A page of ``context`` whose troubles are listed in ``report`` (console_errors,
// external_requests, failed_requests).
export async function watchedPage(context, base, report) {
  context.on("request", (request) => {
    const url = new URL(request.url());
    if (url.protocol.startsWith("http") && url.origin !== base.origin) report.external_requests.push(url.href);
  });
  const page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") report.console_errors.push(page.url() + ": " + message.text());
  });
  page.on("pageerror", (error) => report.console_errors.push(page.url() + ": " + error.message));
  page.on("requestfailed", (request) => {
    // MapLibre cancels the tiles a move has made useless: that is no failure.
    const error = request.failure().errorText;
    if (error !== "net::ERR_ABORTED") report.failed_requests.push(request.url() + " " + error);
  });
  page.on("response", (response) => {
    if (response.status() >= 400) report.failed_requests.push(response.url() + " " + response.status());
  });
  return page;
}
