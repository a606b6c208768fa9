// One job: live progress, the chunk grid, the sentiment chart, the summary and reduce
// result, the paged document view, cancel and downloads. Polls once a second, one request
// at a time, and stops when the job is terminal (and its reduce step, if any, has ended).
import { ApiError, download, getJSON, request } from "./api.js";
import { Chart } from "./chart.js";
import { DocumentView } from "./document.js";
import { age, badge, el, localTime, metadataChips, percentText, setProgress, TERMINAL } from "./dom.js";
import { Grid } from "./grid.js";
import { poll } from "./poll.js";
import { renderResult } from "./results.js";

const jobId = document.getElementById("job").dataset.jobId;
const $ = (id) => document.getElementById(id);

const documentView = new DocumentView(jobId, $("document"), [$("doc-pager-top"), $("doc-pager-bottom")], $("doc-size"));
const grid = new Grid($("grid"), $("grid-legend"), $("chunk-detail"), (index) => documentView.show(index));
const chart = new Chart($("chart"));
let statesFinal = false;
let summaryShown = false;

function renderReport(report) {
  $("job-status").replaceWith(Object.assign(badge(report.status), { id: "job-status" }));
  setProgress($("progress-fill"), report.percent);
  $("progress-pct").textContent = percentText(report.percent);
  const done = report.chunks_completed + report.chunks_failed;
  $("progress-counts").textContent =
    `${done} of ${report.chunks_total} chunks done · ${report.chunks_completed} succeeded · ${report.chunks_failed} failed`;
  const times = [`created ${localTime(report.created_at)} (${age(report.created_at)} ago)`];
  if (report.finished_at) {
    const seconds = (Date.parse(report.finished_at) - Date.parse(report.created_at)) / 1000;
    times.push(`finished in ${seconds.toFixed(1)} s`);
  }
  $("job-times").textContent = times.join(" · ");
  $("job-metadata").replaceChildren(...metadataChips(report.metadata));
  $("cancel").hidden = TERMINAL.has(report.status);

  const result = report.analysis_result;
  if (result && !summaryShown) {
    $("summary").classList.remove("muted");
    $("summary").replaceChildren(result.summary ? renderResult(result.summary) : el("p", { class: "muted", text: "No summary." }));
    summaryShown = true;
  }
  const reduce = result && result.reduce;
  if (reduce && reduce.status !== "skipped") {
    $("reduce-block").hidden = false;
    const parts = [el("p", {}, "status: ", el("strong", { text: reduce.status }))];
    if (reduce.result !== undefined) parts.push(renderResult(reduce.result));
    if (reduce.error) parts.push(el("p", { class: "bad", text: reduce.error }));
    $("reduce").replaceChildren(...parts);
  }
  return reduce && (reduce.status === "pending" || reduce.status === "running");
}

const poller = poll(async () => {
  let report;
  try {
    report = await getJSON(`v1/analyze/${jobId}?chunks=false`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      $("job-missing").hidden = false;
      for (const id of ["job-body", "job-status", "download-json", "download-ndjson"]) $(id).hidden = true;
      return false;
    }
    throw error;
  }
  const reducing = renderReport(report);
  const terminal = TERMINAL.has(report.status);
  if (!statesFinal) {
    const states = await getJSON(`v1/analyze/${jobId}/chunks/states`);
    grid.update(states);
    chart.update(states);
    documentView.update(states);
    statesFinal = terminal;
  }
  return !terminal || Boolean(reducing);
}, 1000);

$("cancel").addEventListener("click", async () => {
  if (!confirm("Cancel this job? Chunks not yet finished will not be analysed.")) return;
  $("cancel").disabled = true;
  try {
    await request(`v1/analyze/${jobId}/cancel`, { method: "POST" });
  } catch (error) {
    // 409: it finished first, which the next poll shows.
    if (!(error instanceof ApiError && error.status === 409)) alert(`Could not cancel: ${error.message}`);
  } finally {
    $("cancel").disabled = false;
    poller.now();
  }
});

$("download-json").addEventListener("click", () =>
  download(`v1/analyze/${jobId}`, `job-${jobId}.json`, "application/json").catch((e) => alert(e.message)),
);
$("download-ndjson").addEventListener("click", () =>
  download(`v1/analyze/${jobId}/chunks`, `job-${jobId}-chunks.ndjson`, "application/x-ndjson").catch((e) => alert(e.message)),
);
