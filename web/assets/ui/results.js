// A provider's output for people, whatever its shape: the fields chunkq's providers give
// (summary, sentiment, key points, keywords, counts) drawn as such, anything else as JSON.
import { el } from "./dom.js";

const COUNTS = ["chunks", "chars", "words", "sentences", "split_chunks", "model", "finish_reason", "digest"];
const SHOWN = new Set([...COUNTS, "summary", "sentiment", "sentiment_score", "key_points", "keywords", "usage", "parts", "summaries"]);

function number(value, digits = 2) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : String(value);
}

// A score from -1 to 1 as a coloured label.
export function scoreClass(score) {
  if (typeof score !== "number") return "neutral";
  if (score >= 0.05) return "positive";
  if (score <= -0.05) return "negative";
  return "neutral";
}

function sentiment(value, score) {
  if (value && typeof value === "object" && "compound" in value) {
    const parts = ["pos", "neu", "neg"].filter((k) => k in value).map((k) => `${k} ${number(value[k])}`);
    return el(
      "div",
      { class: "sentiment" },
      el("span", { class: `score ${scoreClass(value.compound)}`, text: `sentiment ${number(value.compound)}` }),
      parts.length ? el("span", { class: "muted small", text: ` ${parts.join(" · ")}` }) : null,
    );
  }
  if (value && typeof value === "object" && "label" in value) {
    const labels = value.labels ? Object.entries(value.labels).map(([k, n]) => `${k} ${n}`).join(" · ") : "";
    return el(
      "div",
      { class: "sentiment" },
      el("span", { class: `score ${scoreClass(value.score)}`, text: `${value.label} ${number(value.score)}` }),
      labels ? el("span", { class: "muted small", text: ` ${labels}` }) : null,
    );
  }
  if (typeof value === "string") {
    const text = typeof score === "number" ? `${value} ${number(score)}` : value;
    return el("div", { class: "sentiment" }, el("span", { class: `score ${scoreClass(score)}`, text }));
  }
  return null;
}

function keywords(items) {
  if (!Array.isArray(items) || items.length === 0) return null;
  return el(
    "div",
    { class: "keywords" },
    items.map((item) => {
      if (item && typeof item === "object") {
        const detail = "relevance" in item ? `relevance ${number(item.relevance, 3)}${"chunks" in item ? `, in ${item.chunks} chunks` : ""}` : "score" in item ? `score ${number(item.score, 3)} (lower is more relevant)` : "";
        return el("span", { class: "chip", title: detail }, String(item.keyword ?? JSON.stringify(item)));
      }
      return el("span", { class: "chip" }, String(item));
    }),
  );
}

function list(items, className) {
  if (!Array.isArray(items) || items.length === 0) return null;
  return el("ul", { class: className }, items.map((item) => el("li", {}, typeof item === "string" ? item : JSON.stringify(item))));
}

function counts(result) {
  const parts = COUNTS.filter((k) => result[k] !== undefined && result[k] !== null && typeof result[k] !== "object").map((k) => `${k} ${result[k]}`);
  if (result.usage && typeof result.usage === "object") {
    const tokens = Object.entries(result.usage).filter(([, v]) => typeof v === "number").map(([k, v]) => `${k} ${v}`);
    parts.push(...tokens);
  }
  return parts.length ? el("div", { class: "muted small", text: parts.join(" · ") }) : null;
}

function rest(result) {
  const others = Object.fromEntries(Object.entries(result).filter(([k]) => !SHOWN.has(k)));
  if (Object.keys(others).length === 0) return null;
  return el("details", {}, el("summary", { class: "small" }, "more"), el("pre", { text: JSON.stringify(others, null, 2) }));
}

// One chunk's result, or a document's summary, or a reduce step's result.
export function renderResult(result) {
  if (result === null || typeof result !== "object" || Array.isArray(result)) {
    return el("pre", { text: JSON.stringify(result, null, 2) });
  }
  const summaries = Array.isArray(result.summaries) && result.summaries.length
    ? el("details", {}, el("summary", { class: "small" }, `chunk summaries (${result.summaries.length})`), list(result.summaries, "summaries"))
    : null;
  return el(
    "div",
    { class: "result" },
    typeof result.summary === "string" ? el("p", { class: "summary-text", text: result.summary }) : null,
    sentiment(result.sentiment, result.sentiment_score),
    list(result.key_points, "key-points"),
    keywords(result.keywords),
    counts(result),
    summaries,
    rest(result),
  );
}
