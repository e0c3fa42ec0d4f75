// The large view: a modal <dialog> with the original picture (through its signed link), the
// result's metadata, "more like this", "search by this image", and previous/next. Esc closes it
// (the dialog's own cancel), and the focus goes back to the card it came from.

import { originalUrl } from "./api.js";
import { formatScore } from "./grid.js";

function row(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  if (value instanceof Node) dd.append(value);
  else dd.textContent = value;
  list.append(dt, dd);
  return dd;
}

function formatCreated(text) {
  const when = new Date(text);
  if (!text || Number.isNaN(when.getTime())) return "unknown";
  return when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export class Viewer {
  /**
   * ``actions``: {moreLike(result), searchBy(result), filterTag(tag), nearEnd(), closed(index, byAction)};
   * ``results()``: the results shown, for previous/next.
   */
  constructor(dialog, results, actions) {
    this.dialog = dialog;
    this.results = results;
    this.actions = actions;
    this.index = -1;
    this.byAction = false;
    const $ = (selector) => dialog.querySelector(selector);
    this.img = $("#viewer-img");
    this.title = $("#viewer-title");
    this.meta = $("#viewer-meta");
    this.note = $("#viewer-note");
    this.original = $("#viewer-original");
    this.prev = $("#viewer-prev");
    this.next = $("#viewer-next");
    $("#viewer-close").addEventListener("click", () => this.close());
    $("#viewer-more").addEventListener("click", () => this.act("moreLike"));
    $("#viewer-search-by").addEventListener("click", () => this.act("searchBy"));
    this.prev.addEventListener("click", () => this.show(this.index - 1));
    this.next.addEventListener("click", () => this.show(this.index + 1));
    dialog.addEventListener("close", () => {
      const index = this.index;
      this.index = -1;
      this.img.removeAttribute("src");
      this.actions.closed(index, this.byAction);
      this.byAction = false;
    });
    dialog.addEventListener("click", (event) => {
      if (event.target === dialog) this.close(); // the backdrop
    });
    dialog.addEventListener("keydown", (event) => this.keydown(event));
  }

  get isOpen() {
    return this.dialog.open;
  }

  open(index) {
    this.show(index);
    if (!this.dialog.open) this.dialog.showModal();
    this.dialog.querySelector("#viewer-close").focus();
  }

  close() {
    if (this.dialog.open) this.dialog.close();
  }

  act(name) {
    const result = this.results()[this.index];
    if (!result) return;
    this.byAction = true;
    this.close();
    this.actions[name](result);
  }

  keydown(event) {
    const field = event.target.closest("input, textarea, select");
    if (field || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "ArrowLeft" && this.index > 0) {
      event.preventDefault();
      this.show(this.index - 1);
    } else if (event.key === "ArrowRight" && this.index < this.results().length - 1) {
      event.preventDefault();
      this.show(this.index + 1);
    }
  }

  show(index) {
    const results = this.results();
    const result = results[index];
    if (!result) return;
    this.index = index;
    this.title.textContent = result.key;
    this.note.hidden = true;
    const full = originalUrl(result);
    this.original.href = full;
    // the cached thumbnail at once, the original when it has arrived
    this.img.src = result.thumbnailUrl;
    this.img.alt = result.key;
    this.img.width = Number(result.width) || 256;
    this.img.height = Number(result.height) || 256;
    this.img.classList.add("loading");
    const loader = new Image();
    loader.addEventListener("load", () => {
      if (this.index !== index) return;
      this.img.src = full;
      this.img.classList.remove("loading");
    });
    loader.addEventListener("error", () => {
      if (this.index !== index) return;
      this.img.classList.remove("loading");
      this.note.textContent = "The original could not be loaded; this is its thumbnail.";
      this.note.hidden = false;
    });
    loader.src = full;
    this.fillMeta(result);
    this.refresh();
    if (index >= results.length - 3) this.actions.nearEnd();
  }

  /** Previous/next and the position, again (a page arrived while the view is open). */
  refresh() {
    if (!this.dialog.open && this.index < 0) return;
    const count = this.results().length;
    this.prev.disabled = this.index <= 0;
    this.next.disabled = this.index >= count - 1;
    this.dialog.querySelector("#viewer-position").textContent = `${this.index + 1} of ${count}`;
  }

  fillMeta(result) {
    const list = this.meta;
    list.replaceChildren();
    row(list, "Key", result.key).classList.add("mono");
    row(list, "Bucket", result.bucket || "—");
    row(list, "Size", result.width && result.height ? `${result.width} × ${result.height} px` : "unknown");
    row(list, "Type", result.contentType || "unknown");
    const created = row(list, "Created", formatCreated(result.created));
    created.title = result.created || "";
    const tags = document.createElement("span");
    tags.className = "tags";
    for (const tag of result.tags || []) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "tag";
      button.textContent = tag;
      button.title = `Only results tagged “${tag}”`;
      button.addEventListener("click", () => {
        this.byAction = true;
        this.close();
        this.actions.filterTag(tag);
      });
      tags.append(button);
    }
    row(list, "Tags", tags.childElementCount ? tags : "none");
    row(list, "Score", formatScore(result.score));
    row(list, "ID", result.id).classList.add("mono");
  }
}
