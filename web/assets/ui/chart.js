// Sentiment across the document: chunk position on x, its score (-1 to 1) on y, one point
// per succeeded chunk that has a score, failed chunks marked on the axis. An <svg>, redrawn
// only when the scores or failures change.

const SVG = "http://www.w3.org/2000/svg";
const W = 800;
const H = 220;
const PAD = { left: 36, right: 12, top: 12, bottom: 26 };

function node(tag, attrs = {}, text) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

export class Chart {
  constructor(container) {
    this.container = container;
    this.signature = "";
  }

  update(states) {
    const total = states.status.length;
    const points = [];
    const failed = [];
    for (let i = 0; i < total; i += 1) {
      if (typeof states.score[i] === "number") points.push([i, states.score[i]]);
      else if (states.status[i] === "failed") failed.push(i);
    }
    const signature = `${total}:${points.length}:${failed.length}`;
    if (signature === this.signature) return;
    this.signature = signature;
    if (points.length === 0 && failed.length === 0) {
      const note = total && states.status.every((s) => s === "succeeded")
        ? "These results carry no sentiment score."
        : "No scores yet.";
      this.container.replaceChildren(Object.assign(document.createElement("p"), { className: "muted", textContent: note }));
      return;
    }
    const x = (i) => PAD.left + (total <= 1 ? 0.5 : i / (total - 1)) * (W - PAD.left - PAD.right);
    const y = (s) => PAD.top + ((1 - Math.max(-1, Math.min(1, s))) / 2) * (H - PAD.top - PAD.bottom);
    const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, class: "sentiment-chart", role: "img", "aria-label": "sentiment score by chunk" });
    for (const s of [1, 0.5, 0, -0.5, -1]) {
      svg.append(node("line", { x1: PAD.left, x2: W - PAD.right, y1: y(s), y2: y(s), class: s === 0 ? "axis" : "gridline" }));
      svg.append(node("text", { x: PAD.left - 6, y: y(s) + 4, class: "tick", "text-anchor": "end" }, String(s)));
    }
    svg.append(node("text", { x: PAD.left, y: H - 6, class: "tick" }, "chunk 0"));
    svg.append(node("text", { x: W - PAD.right, y: H - 6, class: "tick", "text-anchor": "end" }, `chunk ${total - 1}`));
    if (points.length > 1) {
      const path = points.map(([i, s]) => `${x(i).toFixed(1)},${y(s).toFixed(1)}`).join(" ");
      svg.append(node("polyline", { points: path, class: "line" }));
    }
    const dots = node("g", { class: "points" });
    const r = points.length > 300 ? 1.6 : 3;
    for (const [i, s] of points) {
      const dot = node("circle", { cx: x(i).toFixed(1), cy: y(s).toFixed(1), r, class: s >= 0.05 ? "positive" : s <= -0.05 ? "negative" : "neutral", "data-index": i });
      dot.append(node("title", {}, `chunk ${i}: ${s}`));
      dots.append(dot);
    }
    svg.append(dots);
    const marks = node("g", { class: "failed-marks" });
    for (const i of failed) {
      const mark = node("line", { x1: x(i), x2: x(i), y1: H - PAD.bottom - 6, y2: H - PAD.bottom + 4, "data-index": i });
      mark.append(node("title", {}, `chunk ${i}: failed`));
      marks.append(mark);
    }
    svg.append(marks);
    this.container.replaceChildren(svg);
  }
}
