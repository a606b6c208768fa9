// The submit form: pasted text or a file, max_chunk_chars, reduce and metadata; on 202,
// the job's page. A refused request lists what the API said about each field.
import { ApiError, postJSON } from "./api.js";
import { el } from "./dom.js";

const $ = (id) => document.getElementById(id);
const errors = $("submit-errors");
let fileText = null;

function showErrors(items) {
  errors.replaceChildren(...items.map((item) => el("li", { text: item })));
  errors.hidden = items.length === 0;
}

$("file").addEventListener("change", async () => {
  const file = $("file").files[0];
  fileText = null;
  $("file-info").textContent = "";
  $("clear-file").hidden = !file;
  if (!file) return;
  try {
    fileText = await file.text();
    $("file-info").textContent = `${file.name}: ${fileText.length.toLocaleString()} characters (used instead of the text box)`;
  } catch (error) {
    showErrors([`Could not read ${file.name}: ${error.message}`]);
  }
});

$("clear-file").addEventListener("click", () => {
  $("file").value = "";
  fileText = null;
  $("file-info").textContent = "";
  $("clear-file").hidden = true;
});

function metadata() {
  const found = {};
  const problems = [];
  $("metadata").value.split("\n").forEach((line, n) => {
    if (!line.trim()) return;
    const at = line.indexOf("=");
    if (at <= 0) problems.push(`metadata line ${n + 1}: write key=value`);
    else found[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  });
  return [found, problems];
}

$("submit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = fileText ?? $("text").value;
  const [meta, problems] = metadata();
  if (!text.trim()) problems.unshift("Paste some text or choose a file.");
  const chars = Number($("max-chunk-chars").value);
  if (!Number.isInteger(chars) || chars < 1) problems.push("max_chunk_chars must be a whole number of at least 1.");
  showErrors(problems);
  if (problems.length) return;
  const body = { raw_text: text, max_chunk_chars: chars, reduce: $("reduce").checked };
  if (Object.keys(meta).length) body.metadata = meta;
  $("submit-button").disabled = true;
  try {
    const job = await postJSON("v1/analyze", body);
    location.assign(`jobs/${encodeURIComponent(job.job_id)}`);
  } catch (error) {
    const fields = error instanceof ApiError && Array.isArray(error.problem.errors)
      ? error.problem.errors.map((e) => `${e.field}: ${e.detail}`)
      : [error.message];
    showErrors(fields);
    $("submit-button").disabled = false;
  }
});
