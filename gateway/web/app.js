// The search page: the composition root. A search is its state (state.js) run page by page
// through the API (api.js) into the grid (grid.js); the large view is viewer.js, the filter
// panel filters.js. No framework, no build step: the browser loads these modules as they are.

import { ApiError, apiKey, call, setApiKey } from "./api.js";
import { downloadJson } from "./download.js";
import { FilterPanel } from "./filters.js";
import { Grid } from "./grid.js";
import { fetchPicture, listenForPictures } from "./pictures.js";
import {
  activeFilterCount,
  emptyState,
  queryFromState,
  queryKind,
  requestFields,
  stateFromQuery,
} from "./state.js";
import { Viewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("search-form"),
  q: $("q"),
  file: $("file"),
  filtersToggle: $("filters-toggle"),
  filterCount: $("filter-count"),
  filters: $("filters"),
  status: $("status"),
  partial: $("partial"),
  timings: $("timings"),
  summaryRow: $("summary-row"),
  download: $("download"),
  results: $("results"),
  sentinel: $("sentinel"),
  end: $("end"),
  intro: $("intro"),
  error: $("error"),
  errorText: $("error-text"),
  errorId: $("error-id"),
  auth: $("auth"),
  authMessage: $("auth-message"),
  keyInput: $("api-key"),
  forgetKey: $("forget-key"),
  chip: $("query-chip"),
  chipImg: $("query-chip-img"),
  chipText: $("query-chip-text"),
  drop: $("drop"),
};

const LOOKAHEAD_PX = 600; // fetch the next page this far before the end of the grid comes into view

let state = emptyState();
let upload = null; // {name, file, url}: the last picture uploaded, dropped or pasted
let search = newSearch();
let generation = 0; // a newer search makes older responses stale
let controller = null;
let retryAction = null;
const known = new Map(); // id -> result: "more like this" names its image without a lookup

const panel = new FilterPanel($("filters-form"));
const grid = new Grid(ui.results, (index) => viewer.open(index));
const viewer = new Viewer($("viewer"), () => search.results, {
  moreLike: (result) => start({ ...state, text: "", upload: "", imageId: result.id }),
  searchBy: (result) => searchByResult(result),
  filterTag: (tag) => {
    const tagsAny = state.filters.tagsAny.includes(tag) ? state.filters.tagsAny : [...state.filters.tagsAny, tag];
    start({ ...state, filters: { ...state.filters, tagsAny } });
  },
  nearEnd: () => loadMore(),
  closed: (index, byAction) => {
    if (!byAction) grid.focusCard(index);
  },
});

function newSearch() {
  return {
    results: [], ids: new Set(), token: "", pages: 0, first: null, last: null, requestIds: [],
    done: false, loading: false, failed: false, partial: false,
  };
}

// -- running a search ------------------------------------------------------------------------
/** Makes ``next`` the page's state, in a new history entry, and runs it; ``file``: the upload. */
function start(next, { file = null } = {}) {
  if (file) {
    if (upload) URL.revokeObjectURL(upload.url);
    upload = { name: next.upload, file, url: URL.createObjectURL(file) };
  }
  state = next;
  const url = location.pathname + queryFromState(next);
  if (url !== location.pathname + location.search) history.pushState(null, "", url);
  reflect();
  window.scrollTo({ top: 0 });
  run();
}

function reflect() {
  ui.q.value = state.text;
  panel.write(state);
  const count = activeFilterCount(state);
  ui.filterCount.textContent = String(count);
  ui.filterCount.hidden = count === 0;
  document.title = state.text ? `“${state.text}” · mediasearch` : "mediasearch";
  showChip();
}

function run() {
  generation += 1;
  if (controller) controller.abort();
  controller = new AbortController();
  search = newSearch();
  grid.clear();
  hideError();
  ui.partial.hidden = true;
  ui.timings.replaceChildren();
  ui.end.textContent = "";
  ui.download.disabled = true;
  ui.summaryRow.hidden = true;
  const kind = queryKind(state);
  ui.intro.hidden = kind !== "";
  if (!kind) {
    setStatus(activeFilterCount(state) ? "Filters set: now describe a picture or drop one." : "");
    return;
  }
  if (kind === "upload" && (!upload || upload.name !== state.upload)) {
    setStatus(`The picture “${state.upload}” is not kept in the address: choose or drop it again.`);
    return;
  }
  setStatus("Searching…");
  loadMore();
}

function request(pageToken, signal) {
  const fields = requestFields(state);
  const page = pageToken ? { pageToken } : {};
  const kind = queryKind(state);
  if (kind === "text") return call("/v1/search/text", { json: { text: state.text, ...fields, ...page }, signal });
  if (kind === "like") return call("/v1/search/image", { json: { imageId: state.imageId, ...fields, ...page }, signal });
  // a later page of an uploaded picture: the token carries the query, the picture is not sent again
  if (pageToken) return call("/v1/search/image", { json: { ...fields, ...page }, signal });
  const form = new FormData();
  form.append("image", upload.file, upload.name);
  form.append("topK", String(fields.topK));
  if (fields.minScore) form.append("minScore", String(fields.minScore));
  if (fields.filters) form.append("filters", JSON.stringify(fields.filters));
  if (pageToken) form.append("pageToken", pageToken);
  return call("/v1/search/image", { form, signal });
}

async function loadMore() {
  const s = search;
  if (s.loading || s.done || s.failed || !queryKind(state)) return;
  s.loading = true;
  if (s.pages) ui.end.textContent = "Loading more…";
  const gen = generation;
  let data;
  try {
    data = await request(s.token, controller.signal);
  } catch (err) {
    if (gen !== generation || err.name === "AbortError") return;
    s.loading = false;
    s.failed = true;
    ui.end.textContent = "";
    fail(err, s.pages ? () => { s.failed = false; loadMore(); } : run);
    return;
  }
  if (gen !== generation) return;
  s.loading = false;
  s.pages += 1;
  hideAuth();
  hideError();
  const fresh = (data.results || []).filter((r) => !s.ids.has(r.id));
  for (const r of fresh) {
    s.ids.add(r.id);
    known.set(r.id, r);
  }
  s.results.push(...fresh);
  grid.append(fresh);
  panel.learn(fresh);
  s.token = data.nextPageToken || "";
  s.done = !s.token;
  s.partial = s.partial || Boolean(data.partial);
  s.first = s.first || data;
  s.last = data;
  s.requestIds.push(data.requestId);
  summarize(s);
  viewer.refresh();
  if (s.pages === 1 && queryKind(state) === "like" && !known.has(state.imageId)) showChip(); // after a key
  if (!s.done) requestAnimationFrame(nearEnd);
}

/** Loads the next page while the end of the grid is within reach (a short page, a tall window). */
function nearEnd() {
  if (ui.sentinel.getBoundingClientRect().top < window.innerHeight + LOOKAHEAD_PX) loadMore();
}

new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadMore();
}, { rootMargin: `0px 0px ${LOOKAHEAD_PX}px 0px` }).observe(ui.sentinel);

// -- what the page says ----------------------------------------------------------------------
function setStatus(text) {
  ui.status.textContent = text;
}

function queryName() {
  const kind = queryKind(state);
  if (kind === "text") return `for “${state.text}”`;
  if (kind === "upload") return `like ${state.upload}`;
  const seed = known.get(state.imageId);
  return `like ${seed ? seed.key : `image ${state.imageId}`}`;
}

function summarize(s) {
  const n = s.results.length;
  if (n === 0) {
    const narrowed = activeFilterCount(state) ? " Try fewer filters or a lower minimum score." : "";
    setStatus(`No images ${queryName()}.${narrowed}`);
  } else {
    setStatus(`${n} result${n === 1 ? "" : "s"} ${queryName()}${s.done ? "" : ", more below"}.`);
  }
  ui.end.textContent = s.done && n ? `No more results: all ${n} are shown.` : "";
  ui.partial.hidden = !s.partial;
  ui.summaryRow.hidden = false;
  ui.download.disabled = n === 0;
  // the first page's stages say what the query cost (later pages reuse its vector: no encode)
  const t = s.first.timings || {};
  const parts = [
    ["encode", t.encodeMs], ["search", t.searchMs], ["merge", t.mergeMs], ["metadata", t.metadataMs], ["total", t.totalMs],
  ];
  const items = parts.map(([name, ms]) => timing(name, `${Number(ms || 0).toFixed(1)} ms`));
  items.push(timing("rounds", String(t.rounds || 0)));
  if (s.pages > 1) {
    const later = Number((s.last.timings || {}).totalMs || 0).toFixed(1);
    items.push(timing("pages", `${s.pages} (last ${later} ms)`));
  }
  items.push(timing("model", s.last.modelVersion || "?"));
  ui.timings.replaceChildren(...items);
  ui.timings.title = `page ${s.pages}, request id ${s.last.requestId}`;
}

function timing(name, value) {
  const item = document.createElement("span");
  item.className = "timing";
  const label = document.createElement("span");
  label.className = "timing-name";
  label.textContent = name;
  item.append(label, ` ${value}`);
  return item;
}

function fail(err, retry) {
  retryAction = retry;
  if (err instanceof ApiError && err.isAuth) {
    showAuth(err);
    setStatus("The gateway needs a valid API key.");
    return;
  }
  let text = err.message || String(err);
  if (err.retryAfter) text += ` Try again in ${err.retryAfter} s.`;
  ui.errorText.textContent = text;
  ui.errorId.textContent = err.requestId ? `request id ${err.requestId}` : "";
  ui.error.hidden = false;
  setStatus(err.status ? `The search failed (${err.code}).` : "The search failed.");
}

function hideError() {
  ui.error.hidden = true;
}

function showAuth(err) {
  const had = Boolean(apiKey());
  const why = had
    ? err.status === 403
      ? "This key may not do that"
      : "The gateway refused this key"
    : "This gateway needs an API key";
  ui.authMessage.textContent = `${why}: ${err.message}${err.requestId ? ` (request id ${err.requestId})` : ""}`;
  ui.auth.hidden = false;
  ui.forgetKey.hidden = !had;
  ui.keyInput.focus();
  ui.keyInput.select();
}

function hideAuth() {
  ui.auth.hidden = true;
}

async function showChip() {
  const kind = queryKind(state);
  ui.chip.hidden = kind !== "like" && kind !== "upload";
  if (ui.chip.hidden) return;
  if (kind === "upload") {
    ui.chipText.textContent = `Pictures like ${state.upload}`;
    if (upload && upload.name === state.upload) ui.chipImg.src = upload.url;
    else ui.chipImg.removeAttribute("src");
    return;
  }
  const id = state.imageId;
  let seed = known.get(id);
  ui.chipText.textContent = `Pictures like ${seed ? seed.key : `image ${id}`}`;
  if (seed) ui.chipImg.src = seed.thumbnailUrl;
  else ui.chipImg.removeAttribute("src");
  if (seed) return;
  try {
    seed = await call(`/v1/images/${encodeURIComponent(id)}`);
  } catch {
    return; // the search itself reports what is wrong (a missing key, an unknown id)
  }
  known.set(id, seed);
  if (state.imageId !== id) return;
  ui.chipText.textContent = `Pictures like ${seed.key}`;
  ui.chipImg.src = seed.thumbnailUrl;
  if (search.pages) summarize(search);
}

// -- searching by a picture ------------------------------------------------------------------
function searchFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    fail(new ApiError(0, "INVALID_ARGUMENT", `“${file.name}” is not a picture (${file.type}).`), null);
    return;
  }
  start({ ...state, text: "", imageId: "", upload: file.name || "pasted picture" }, { file });
}

async function searchByResult(result) {
  setStatus(`Fetching ${result.key}…`);
  const file = await fetchPicture(result);
  if (file) searchFile(file);
  else fail(new ApiError(0, "UNAVAILABLE", `The picture ${result.key} could not be fetched to search with.`), null);
}

listenForPictures(ui.drop, searchFile);

// -- controls ----------------------------------------------------------------------------------
ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.q.value.trim();
  if (!text) {
    setStatus("Type what the pictures should show, or drop a picture anywhere on the page.");
    ui.q.focus();
    return;
  }
  start({ ...emptyState(), ...panel.read(), text });
});

$("upload").addEventListener("click", () => ui.file.click());
ui.file.addEventListener("change", () => {
  const file = ui.file.files && ui.file.files[0];
  ui.file.value = ""; // choosing the same file again searches again
  searchFile(file);
});

ui.filtersToggle.addEventListener("click", () => {
  const open = ui.filters.hidden;
  ui.filters.hidden = !open;
  ui.filtersToggle.setAttribute("aria-expanded", String(open));
  if (open) ui.filters.querySelector("input").focus();
});

$("filters-form").addEventListener("submit", (event) => {
  event.preventDefault();
  start({ ...state, ...panel.read() });
});
$("filters-clear").addEventListener("click", () => {
  start({ ...emptyState(), text: state.text, imageId: state.imageId, upload: state.upload, topK: state.topK });
});

$("query-chip-clear").addEventListener("click", () => {
  start({ ...state, text: "", imageId: "", upload: "" });
  ui.q.focus();
});

$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.keyInput.value.trim();
  if (!key) {
    ui.authMessage.textContent = "Paste an API key first (it starts with ms_).";
    ui.keyInput.focus();
    return;
  }
  setApiKey(key);
  ui.authMessage.textContent = "Checking the key…";
  (retryAction || run)();
});
ui.forgetKey.addEventListener("click", () => {
  setApiKey("");
  ui.keyInput.value = "";
  ui.forgetKey.hidden = true;
  ui.authMessage.textContent = "The key is forgotten.";
  ui.keyInput.focus();
});
$("error-retry").addEventListener("click", () => {
  hideError();
  (retryAction || run)();
});

ui.download.addEventListener("click", () => {
  const s = search;
  downloadJson(state.text || state.upload || `like-${state.imageId}`, {
    query: { text: state.text || undefined, imageId: state.imageId || undefined, upload: state.upload || undefined },
    ...requestFields(state),
    page: location.href,
    downloaded: new Date().toISOString(),
    modelVersion: s.last && s.last.modelVersion,
    partial: s.partial,
    complete: s.done,
    requestIds: s.requestIds,
    results: s.results,
  });
});

document.addEventListener("keydown", (event) => {
  if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey || viewer.isOpen) return;
  if (event.target.closest && event.target.closest("input, textarea, select, [contenteditable]")) return;
  event.preventDefault();
  ui.q.focus();
  ui.q.select();
});

window.addEventListener("popstate", () => {
  viewer.close();
  state = stateFromQuery(location.search);
  reflect();
  run();
});

state = stateFromQuery(location.search);
reflect();
run();
