// The jobs list: newest first, a status filter, pages by cursor, refreshed every 2 s.
import { getJSON } from "./api.js";
import { age, badge, el, metadataChips, percentText, progress } from "./dom.js";
import { poll } from "./poll.js";

const PAGE = 20;
const body = document.getElementById("jobs-body");
const filter = document.getElementById("status-filter");
const newer = document.getElementById("newer");
const older = document.getElementById("older");
const params = new URLSearchParams(location.search);
filter.value = params.get("status") || "";
if (filter.selectedIndex < 0) filter.value = "";

// cursors[i] is the cursor of page i (null: the first page).
let cursors = [null];
let page = 0;

function row(job) {
  const link = el("a", { href: `jobs/${encodeURIComponent(job.job_id)}`, class: "mono" }, job.job_id.slice(0, 8));
  return el(
    "tr",
    { dataset: { jobId: job.job_id, status: job.status } },
    el("td", { title: job.job_id }, link),
    el("td", {}, badge(job.status)),
    el("td", {}, el("div", { class: "progress-cell" }, progress(job.percent), el("span", { class: "pct", text: percentText(job.percent) }))),
    el("td", { class: "num" }, `${job.chunks_completed + job.chunks_failed} / ${job.chunks_total}`),
    el("td", { class: job.chunks_failed ? "num bad" : "num" }, String(job.chunks_failed)),
    el("td", { title: job.created_at }, age(job.created_at)),
    el("td", { class: "meta" }, metadataChips(job.metadata)),
  );
}

async function refresh() {
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (filter.value) query.set("status", filter.value);
  if (cursors[page]) query.set("cursor", cursors[page]);
  const listing = await getJSON(`v1/analyze?${query}`);
  body.replaceChildren(...listing.data.map(row));
  document.getElementById("jobs-empty").hidden = listing.data.length > 0;
  cursors = cursors.slice(0, page + 1);
  if (listing.next_cursor) cursors.push(listing.next_cursor);
  newer.disabled = page === 0;
  older.disabled = !listing.next_cursor;
  document.getElementById("page-label").textContent = `page ${page + 1}`;
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  return true;
}

const poller = poll(refresh, 2000);

filter.addEventListener("change", () => {
  const url = new URL(location.href);
  if (filter.value) url.searchParams.set("status", filter.value);
  else url.searchParams.delete("status");
  history.replaceState(null, "", url);
  cursors = [null];
  page = 0;
  poller.now();
});
newer.addEventListener("click", () => {
  page = Math.max(0, page - 1);
  poller.now();
});
older.addEventListener("click", () => {
  if (cursors[page + 1]) page += 1;
  poller.now();
});
