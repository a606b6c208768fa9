// Building the page from the API's data: every value from the server goes in as text
// (createTextNode / textContent), never as HTML.

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const TERMINAL = new Set(["COMPLETED", "PARTIAL_SUCCESS", "FAILED", "CANCELLED"]);

export function badge(status) {
  return el("span", { class: `badge s-${String(status).toLowerCase()}`, text: status });
}

export function progress(percent) {
  const bar = el("div", { class: "progress" }, el("div", { class: "fill" }));
  setProgress(bar.firstChild, percent);
  return bar;
}

export function setProgress(fill, percent) {
  const value = Math.max(0, Math.min(100, Number(percent) || 0));
  fill.style.width = `${value}%`;
}

export function percentText(percent) {
  const value = Number(percent) || 0;
  return `${value.toFixed(value > 0 && value < 10 ? 1 : 0)}%`;
}

// "12 s", "5 min", "3 h", "2 d" since an ISO time.
export function age(iso, now = Date.now()) {
  const seconds = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 60) return `${Math.floor(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
  return `${Math.floor(seconds / 86400)} d`;
}

export function localTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

export function metadataChips(metadata) {
  const entries = Object.entries(metadata || {});
  return entries.map(([key, value]) =>
    el("span", { class: "chip", title: `${key}=${value}` }, el("b", { text: key }), "=", String(value)),
  );
}
