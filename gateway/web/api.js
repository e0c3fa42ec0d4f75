// The gateway's HTTP/JSON API (see /openapi.json): one fetch wrapper that sends the API key, and
// turns every failure into an ApiError carrying the server's message and request id.

const KEY_ITEM = "mediasearch.apiKey";

export class ApiError extends Error {
  constructor(status, code, message, requestId = "", retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status; // HTTP status; 0 when the gateway could not be reached
    this.code = code; // the gRPC status name, e.g. UNAUTHENTICATED
    this.requestId = requestId;
    this.retryAfter = retryAfter; // seconds, from Retry-After (429)
  }

  /** A key is missing, unknown, revoked, or lacks the scope. */
  get isAuth() {
    return this.status === 401 || this.status === 403;
  }
}

export function apiKey() {
  try {
    return sessionStorage.getItem(KEY_ITEM) || "";
  } catch {
    return ""; // storage disabled: the key lives only as long as this page
  }
}

let memoryKey = "";

export function setApiKey(key) {
  memoryKey = key;
  try {
    if (key) sessionStorage.setItem(KEY_ITEM, key);
    else sessionStorage.removeItem(KEY_ITEM);
  } catch {
    // storage disabled: keep it in memory only
  }
}

function currentKey() {
  return apiKey() || memoryKey;
}

/** ``call(path, {json | form, method, signal})``: the response's JSON, or throws ApiError. */
export async function call(path, { json, form, method, signal } = {}) {
  const headers = { Accept: "application/json" };
  const key = currentKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser sets multipart/form-data with its boundary
  }
  let response;
  try {
    response = await fetch(path, { method: method || (body ? "POST" : "GET"), headers, body, signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "UNAVAILABLE", `The gateway cannot be reached (${err.message}).`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    throw new ApiError(
      response.status,
      error.code || `HTTP_${response.status}`,
      error.message || `${response.status} ${response.statusText || "error"}`,
      error.requestId || response.headers.get("x-request-id") || "",
      Number.isFinite(retry) ? retry : null,
    );
  }
  if (data === null) {
    throw new ApiError(response.status, "INTERNAL", "The gateway answered with something that is not JSON.");
  }
  return data;
}

/** The original picture behind a result: its thumbnail link's signature opens it too. */
export function originalUrl(result) {
  return (result.thumbnailUrl || "").replace("/thumbnail?", "/original?");
}
