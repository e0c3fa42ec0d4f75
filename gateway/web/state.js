// The page's state and its address: what is searched (text, an indexed image's id, or an uploaded
// file), the filters, the minimum score and the page size. Everything but an uploaded file's bytes
// lives in the query string, so a search can be shared and Back works.

export const TOP_K_CHOICES = [12, 24, 48, 96]; // the gateway allows at most 100
export const DEFAULT_TOP_K = 24;

export function emptyFilters() {
  return {
    tagsAny: [],
    tagsAll: [],
    contentTypes: [],
    after: "", // YYYY-MM-DD, inclusive (UTC)
    before: "", // YYYY-MM-DD, inclusive (UTC): the request says "before the next day"
    bucket: "",
    keyPrefix: "",
  };
}

export function emptyState() {
  return { text: "", imageId: "", upload: "", filters: emptyFilters(), minScore: 0, topK: DEFAULT_TOP_K };
}

/** Which kind of query a state asks: "text", "like" (an indexed image), "upload" or "" (none). */
export function queryKind(state) {
  if (state.imageId) return "like";
  if (state.upload) return "upload";
  if (state.text) return "text";
  return "";
}

const DATE = /^\d{4}-\d{2}-\d{2}$/;
const ID = /^[1-9]\d{0,18}$/;

function clean(values) {
  return [...new Set(values.map((v) => v.trim()).filter(Boolean))];
}

/** Comma-separated words (a tag or content-type field) as a list. */
export function splitList(text) {
  return clean(String(text || "").split(","));
}

export function stateFromQuery(search) {
  const p = new URLSearchParams(search);
  const state = emptyState();
  state.text = (p.get("q") || "").trim();
  const like = (p.get("like") || "").trim();
  state.imageId = ID.test(like) ? like : "";
  state.upload = state.imageId ? "" : (p.get("upload") || "").trim();
  if (state.imageId || state.upload) state.text = "";
  const f = state.filters;
  f.tagsAny = clean(p.getAll("any"));
  f.tagsAll = clean(p.getAll("all"));
  f.contentTypes = clean(p.getAll("type"));
  f.after = DATE.test(p.get("after") || "") ? p.get("after") : "";
  f.before = DATE.test(p.get("before") || "") ? p.get("before") : "";
  f.bucket = (p.get("bucket") || "").trim();
  f.keyPrefix = p.get("prefix") || "";
  const min = Number.parseFloat(p.get("min") || "");
  state.minScore = Number.isFinite(min) ? Math.min(1, Math.max(-1, min)) : 0;
  const k = Number.parseInt(p.get("k") || "", 10);
  state.topK = Number.isInteger(k) && k >= 1 && k <= 100 ? k : DEFAULT_TOP_K;
  return state;
}

export function queryFromState(state) {
  const p = new URLSearchParams();
  const kind = queryKind(state);
  if (kind === "text") p.set("q", state.text);
  if (kind === "like") p.set("like", state.imageId);
  if (kind === "upload") p.set("upload", state.upload);
  const f = state.filters;
  for (const tag of f.tagsAny) p.append("any", tag);
  for (const tag of f.tagsAll) p.append("all", tag);
  for (const type of f.contentTypes) p.append("type", type);
  if (f.after) p.set("after", f.after);
  if (f.before) p.set("before", f.before);
  if (f.bucket) p.set("bucket", f.bucket);
  if (f.keyPrefix) p.set("prefix", f.keyPrefix);
  if (state.minScore) p.set("min", String(state.minScore));
  if (state.topK !== DEFAULT_TOP_K) p.set("k", String(state.topK));
  const text = p.toString();
  return text ? `?${text}` : "";
}

/** How many filter conditions are set (the badge on the Filters button). */
export function activeFilterCount(state) {
  const f = state.filters;
  const set = [f.tagsAny.length, f.tagsAll.length, f.contentTypes.length, f.after, f.before, f.bucket, f.keyPrefix];
  return set.filter(Boolean).length + (state.minScore ? 1 : 0);
}

function dayAfter(date) {
  const [y, m, d] = date.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d + 1)).toISOString().replace(".000Z", "Z");
}

/** The request's ``filters`` message (proto3 JSON names), only with the conditions that are set. */
export function filtersMessage(filters) {
  const m = {};
  if (filters.tagsAny.length) m.tagsAny = filters.tagsAny;
  if (filters.tagsAll.length) m.tagsAll = filters.tagsAll;
  if (filters.contentTypes.length) m.contentTypes = filters.contentTypes;
  if (filters.after) m.createdAfter = `${filters.after}T00:00:00Z`;
  if (filters.before) m.createdBefore = dayAfter(filters.before);
  if (filters.bucket) m.bucket = filters.bucket;
  if (filters.keyPrefix) m.keyPrefix = filters.keyPrefix;
  return m;
}

/** The fields every page of one search repeats exactly (a page token is refused otherwise). */
export function requestFields(state) {
  const body = { topK: state.topK };
  const filters = filtersMessage(state.filters);
  if (Object.keys(filters).length) body.filters = filters;
  if (state.minScore) body.minScore = state.minScore;
  return body;
}
