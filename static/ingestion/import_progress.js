// Progress of an import job on its admin page: polls the job's JSON status while a worker
// runs it and reloads the page when it ends, so the report appears. No inline script, no
// external library: the admin works offline and under a strict Content-Security-Policy.
"use strict";

(function () {
  const box = document.getElementById("import-progress");
  if (!box || box.dataset.running !== "true") {
    return;
  }
  const bar = box.querySelector("progress");
  const text = box.querySelector("[data-role=text]");
  const everyMs = 1000;

  function rows(status) {
    if (!status.rows_read && !status.rows_total) {
      return "";
    }
    let out = ": " + status.rows_read.toLocaleString();
    if (status.rows_total) {
      out += " of " + (status.rows_total_estimated ? "≈ " : "") + status.rows_total.toLocaleString();
    }
    return out + " rows";
  }

  function show(status) {
    if (status.percent === null) {
      bar.removeAttribute("value"); // an indeterminate bar: the total is unknown
    } else {
      bar.value = status.percent;
    }
    let label = status.state_label;
    if (status.running) {
      label += " — " + status.phase;
    }
    text.textContent = label + rows(status);
  }

  async function poll() {
    try {
      const response = await fetch(box.dataset.url, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      const status = await response.json();
      show(status);
      if (!status.running) {
        window.location.reload();
        return;
      }
    } catch (error) {
      text.textContent = "Progress unavailable (" + error.message + "); trying again…";
    }
    window.setTimeout(poll, everyMs);
  }

  window.setTimeout(poll, everyMs);
})();
