// The document view: each chunk's text with its result beside it, a page of chunks at a
// time (so a 1,000-chunk job renders in an instant), failed chunks marked in place. A page
// is fetched again only when the status of one of its chunks changed.
import { getJSON } from "./api.js";
import { el } from "./dom.js";
import { renderResult } from "./results.js";

export class DocumentView {
  constructor(jobId, container, pagers, sizeSelect) {
    this.jobId = jobId;
    this.container = container;
    this.pagers = pagers;
    this.size = Number(sizeSelect.value) || 20;
    this.page = 0;
    this.total = 0;
    this.statuses = [];
    this.shown = null; // the statuses of the page on screen, joined
    this.loading = false;
    this.again = false;
    this.picked = null;
    sizeSelect.addEventListener("change", () => {
      const first = this.page * this.size;
      this.size = Number(sizeSelect.value) || 20;
      this.go(Math.floor(first / this.size));
    });
  }

  pages() {
    return Math.max(1, Math.ceil(this.total / this.size));
  }

  // New chunk states from the poll: reload the page on screen if any of its chunks moved.
  update(states) {
    this.total = states.status.length;
    this.statuses = states.status;
    if (this.signature() !== this.shown) this.load();
  }

  signature() {
    return this.statuses.slice(this.page * this.size, (this.page + 1) * this.size).join(",");
  }

  go(page, picked = null) {
    this.page = Math.max(0, Math.min(page, this.pages() - 1));
    this.picked = picked;
    this.load();
  }

  // Open the page holding chunk ``index`` and bring the chunk into view.
  show(index) {
    this.go(Math.floor(index / this.size), index);
  }

  async load() {
    if (this.loading) {
      this.again = true;
      return;
    }
    this.loading = true;
    try {
      do {
        this.again = false;
        const signature = this.signature();
        const first = this.page * this.size;
        const listing = await getJSON(
          `v1/analyze/${this.jobId}/chunks?text=true&from=${first}&limit=${this.size}`,
        );
        this.render(listing.data);
        this.shown = signature;
      } while (this.again);
    } catch (error) {
      this.container.replaceChildren(el("p", { class: "bad", text: `Could not load chunks: ${error.message}` }));
      this.shown = null;
    } finally {
      this.loading = false;
    }
  }

  render(chunks) {
    this.container.replaceChildren(...chunks.map((chunk) => this.row(chunk)));
    this.renderPagers();
    if (this.picked !== null) {
      const target = document.getElementById(`chunk-${this.picked}`);
      if (target) {
        target.classList.add("picked");
        target.scrollIntoView({ block: "center" });
      }
      this.picked = null;
    }
  }

  row(chunk) {
    let aside;
    if (chunk.status === "succeeded") aside = renderResult(chunk.result);
    else if (chunk.status === "failed") {
      aside = el("div", { class: "failure" }, el("strong", { text: `Failed after ${chunk.attempts} attempt${chunk.attempts === 1 ? "" : "s"}` }), el("p", { text: chunk.error || "" }));
    } else {
      const retry = chunk.error ? el("p", { class: "muted small", text: `last error (attempt ${chunk.attempts}): ${chunk.error}` }) : null;
      aside = el("div", { class: "muted" }, el("span", { text: chunk.status }), retry);
    }
    return el(
      "article",
      { class: `chunk c-${chunk.status}`, id: `chunk-${chunk.index}`, dataset: { index: chunk.index, status: chunk.status } },
      el(
        "div",
        { class: "chunk-body" },
        el("div", { class: "chunk-label muted small", text: `#${chunk.index} · ${chunk.status} · chars ${chunk.start}–${chunk.end}` }),
        el("div", { class: "chunk-text", text: chunk.text ?? "" }),
      ),
      el("aside", { class: "chunk-result" }, aside),
    );
  }

  renderPagers() {
    const last = this.pages() - 1;
    const from = this.total ? this.page * this.size : 0;
    const to = Math.min(this.total, (this.page + 1) * this.size) - 1;
    for (const pager of this.pagers) {
      const button = (label, page, title) => {
        const b = el("button", { type: "button", title, class: "quiet" }, label);
        b.disabled = page < 0 || page > last || page === this.page;
        b.addEventListener("click", () => this.go(page));
        return b;
      };
      pager.replaceChildren(
        button("«", 0, "first page"),
        button("‹ Previous", this.page - 1, "previous page"),
        el("span", { class: "page-label muted", text: `page ${this.page + 1} of ${last + 1} · chunks ${from}–${Math.max(from, to)} of ${this.total}` }),
        button("Next ›", this.page + 1, "next page"),
        button("»", last, "last page"),
      );
    }
  }
}
