// The chunk grid: one cell per chunk, coloured by status, built in one pass and then only
// the cells whose status changed are touched, so a 1,000-chunk job stays smooth.
import { el } from "./dom.js";

export const CHUNK_STATUSES = ["pending", "running", "succeeded", "failed", "cancelled"];

export class Grid {
  constructor(container, legend, detail, onPick) {
    this.container = container;
    this.legend = legend;
    this.detail = detail;
    this.cells = [];
    this.states = { status: [], attempts: [], errors: [] };
    this.errors = new Map();
    container.addEventListener("mouseover", (event) => this.describe(event.target));
    container.addEventListener("click", (event) => {
      const index = this.describe(event.target);
      if (index !== null) onPick(index);
    });
  }

  update(states) {
    this.states = states;
    this.errors = new Map(states.errors.map((e) => [e.index, e.error]));
    if (this.cells.length !== states.status.length) this.build(states.status.length);
    for (let i = 0; i < this.cells.length; i += 1) {
      const name = `cell c-${states.status[i]}`;
      if (this.cells[i].className !== name) this.cells[i].className = name;
    }
    const counts = Object.fromEntries(CHUNK_STATUSES.map((s) => [s, 0]));
    for (const status of states.status) counts[status] = (counts[status] || 0) + 1;
    this.legend.replaceChildren(
      ...CHUNK_STATUSES.map((s) => el("span", { class: "legend-item" }, el("span", { class: `cell c-${s}` }), ` ${s} ${counts[s]}`)),
    );
  }

  build(count) {
    const fragment = document.createDocumentFragment();
    this.cells = [];
    for (let i = 0; i < count; i += 1) {
      const cell = document.createElement("span");
      cell.dataset.index = String(i);
      cell.setAttribute("role", "listitem");
      this.cells.push(cell);
      fragment.append(cell);
    }
    this.container.replaceChildren(fragment);
  }

  // Show a cell's status, attempts and last error below the grid; its index, or null.
  describe(target) {
    if (!(target instanceof HTMLElement) || target.dataset.index === undefined) return null;
    const index = Number(target.dataset.index);
    const status = this.states.status[index];
    const attempts = this.states.attempts[index];
    const error = this.errors.get(index);
    const text = `Chunk ${index}: ${status}, ${attempts} attempt${attempts === 1 ? "" : "s"}`;
    target.title = error ? `${text}\nlast error: ${error}` : text;
    this.detail.replaceChildren(
      el("strong", { text }),
      error ? el("span", { class: "bad", text: ` · last error: ${error}` }) : "",
    );
    return index;
  }
}
