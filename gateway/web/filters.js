// The filter panel: reads the form into a state's filters, writes a state back into the form, and
// offers the tags and content types seen in results as suggestions (the API has no list of them).

import { DEFAULT_TOP_K, TOP_K_CHOICES, emptyFilters, splitList } from "./state.js";

const COMMON_TYPES = ["image/jpeg", "image/png", "image/webp", "image/gif"];

export class FilterPanel {
  constructor(form) {
    this.form = form;
    this.f = form.elements;
    this.types = form.querySelector("#f-types");
    this.tagList = document.getElementById("tag-suggestions");
    this.seenTags = new Set();
    this.knownTypes = new Set();
    for (const type of COMMON_TYPES) this.addType(type);
    const topK = this.f.namedItem("topK");
    for (const k of TOP_K_CHOICES) topK.add(new Option(String(k), String(k), k === DEFAULT_TOP_K));
    const min = this.f.namedItem("minScore");
    const shown = form.querySelector("#f-min-value");
    const sync = () => {
      shown.value = Number(min.value) > 0 ? Number(min.value).toFixed(2) : "off";
    };
    min.addEventListener("input", sync);
    this.syncMin = sync;
    sync();
  }

  addType(type) {
    if (!type || this.knownTypes.has(type)) return;
    this.knownTypes.add(type);
    const label = document.createElement("label");
    label.className = "check";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.name = "contentTypes";
    box.value = type;
    label.append(box, ` ${type.replace(/^image\//, "")}`);
    label.title = type;
    this.types.append(label);
  }

  /** Tags and content types of results, as suggestions. */
  learn(results) {
    for (const result of results) {
      this.addType(result.contentType);
      for (const tag of result.tags || []) {
        if (this.seenTags.has(tag) || this.seenTags.size >= 500) continue;
        this.seenTags.add(tag);
        this.tagList.append(new Option(tag));
      }
    }
  }

  /** {filters, minScore, topK} as the form shows them. */
  read() {
    const f = this.f;
    const filters = emptyFilters();
    filters.tagsAny = splitList(f.namedItem("tagsAny").value);
    filters.tagsAll = splitList(f.namedItem("tagsAll").value);
    filters.contentTypes = [...this.types.querySelectorAll("input:checked")].map((box) => box.value);
    filters.after = f.namedItem("after").value;
    filters.before = f.namedItem("before").value;
    filters.bucket = f.namedItem("bucket").value.trim();
    filters.keyPrefix = f.namedItem("keyPrefix").value;
    const min = Number.parseFloat(f.namedItem("minScore").value);
    const topK = Number.parseInt(f.namedItem("topK").value, 10);
    return { filters, minScore: min > 0 ? Math.round(min * 100) / 100 : 0, topK: topK || DEFAULT_TOP_K };
  }

  write(state) {
    const f = this.f;
    const filters = state.filters;
    f.namedItem("tagsAny").value = filters.tagsAny.join(", ");
    f.namedItem("tagsAll").value = filters.tagsAll.join(", ");
    for (const type of filters.contentTypes) this.addType(type);
    for (const box of this.types.querySelectorAll("input")) box.checked = filters.contentTypes.includes(box.value);
    f.namedItem("after").value = filters.after;
    f.namedItem("before").value = filters.before;
    f.namedItem("bucket").value = filters.bucket;
    f.namedItem("keyPrefix").value = filters.keyPrefix;
    f.namedItem("minScore").value = String(state.minScore > 0 ? state.minScore : 0);
    const topK = f.namedItem("topK");
    if (![...topK.options].some((o) => o.value === String(state.topK))) {
      topK.add(new Option(String(state.topK), String(state.topK)));
    }
    topK.value = String(state.topK);
    this.syncMin();
  }
}
