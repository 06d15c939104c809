// The review station's shared script: the token, API calls, images loaded with the token, formatting.
// The token lives in this tab's sessionStorage and goes with every request as "Authorization: Bearer".

const TOKEN = "inspect.token";
const REVIEWER = "inspect.reviewer";
const FLASH = "inspect.flash";

export const session = {
  token: () => sessionStorage.getItem(TOKEN) ?? "",
  reviewer: () => sessionStorage.getItem(REVIEWER) ?? "",
  save(token, reviewer) {
    sessionStorage.setItem(TOKEN, token);
    sessionStorage.setItem(REVIEWER, reviewer);
  },
  setReviewer: (name) => sessionStorage.setItem(REVIEWER, name),
  signOut: () => sessionStorage.removeItem(TOKEN),
  flash(text) {
    if (text === undefined) {
      const message = sessionStorage.getItem(FLASH);
      sessionStorage.removeItem(FLASH);
      return message;
    }
    sessionStorage.setItem(FLASH, text);
  },
};

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(`${detail} (${status} ${code})`);
    this.status = status;
    this.code = code;
  }
}

export function toLogin(reason) {
  if (reason) session.flash(reason);
  location.assign(`/ui/login?next=${encodeURIComponent(location.pathname + location.search)}`);
}

// One API call with the token: JSON in and out (a Blob for images); errors as ApiError.
export async function api(path, { method = "GET", params, body, login = true } = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(params ?? {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const headers = {};
  if (session.token()) headers.Authorization = `Bearer ${session.token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!response.ok) {
    let error = {};
    try {
      error = await response.json();
    } catch {
      // not a JSON error body: keep the status text
    }
    if (response.status === 401 && login) toLogin("Sign in first: this service needs a token.");
    throw new ApiError(response.status, error.error ?? "http_error", error.detail ?? response.statusText);
  }
  const type = response.headers.get("content-type") ?? "";
  return type.includes("json") ? response.json() : response.blob();
}

// Every page but the login: who is signed in, the sign-out button, and the read-only notice.
export async function start() {
  let me;
  try {
    me = await api("/v1/session");
  } catch (error) {
    if (error.status === 403) toLogin(`This token cannot read from the service: ${error.message}`);
    throw error;
  }
  document.getElementById("who").textContent = `Signed in as ${me.name}${me.may_review ? "" : " (read only)"}`;
  document.getElementById("sign-out").addEventListener("click", () => {
    session.signOut();
    toLogin("Signed out.");
  });
  if (!me.may_review) {
    standing = "Read-only token: you can look at the line, the queue and the models, but images, heatmaps, "
      + "labelling and the what-if need a token with the review scope.";
    notice("");
  }
  return me;
}

// The notice line: an error or a message for a moment; notice("") shows the standing one (read only) again.
let standing = "";
export function notice(text, kind = "info") {
  const element = document.getElementById("notice");
  element.textContent = text || standing;
  element.dataset.kind = text ? kind : "info";
  element.hidden = !element.textContent;
}

export function fill(templateId, fields) {
  const element = document.getElementById(templateId).content.firstElementChild.cloneNode(true);
  return refill(element, fields);
}

export function refill(element, fields) {
  for (const slot of element.querySelectorAll("[data-field]")) {
    const value = fields[slot.dataset.field];
    slot.textContent = value === null || value === undefined ? "—" : String(value);
  }
  return element;
}

// Counts how often a page has shown fresh data (tests and the page benchmark wait for it).
export function markReady() {
  document.body.dataset.ready = String(Number(document.body.dataset.ready ?? 0) + 1);
}

export const fmt = {
  pct: (v) => (v === null || v === undefined ? "—" : `${(100 * v).toFixed(1)} %`),
  num: (v, digits = 3) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits)),
  time: (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "—"),
  when: (iso) => (iso ? new Date(iso).toLocaleString() : "—"),
  json: (v) => (v === null || v === undefined ? "—" : typeof v === "string" ? v : JSON.stringify(v)),
};

// Images need the token, which a plain src cannot send: fetch them, show them as object URLs.
const objectUrls = new Map();
const MAX_IMAGES = 300;

// Resolves true once ``img`` shows ``url``, false when a later call asked it to show something else first
// (a slow image must never replace the one the reviewer asked for after it).
export async function showImage(img, url) {
  img.dataset.want = url ?? "";
  if (!url) {
    img.removeAttribute("src");
    return false;
  }
  let objectUrl = objectUrls.get(url);
  if (!objectUrl) {
    objectUrl = URL.createObjectURL(await api(url));
    objectUrls.set(url, objectUrl);
    if (objectUrls.size > MAX_IMAGES) {
      const [oldest, old] = objectUrls.entries().next().value;
      objectUrls.delete(oldest);
      URL.revokeObjectURL(old);
    }
  }
  if (img.dataset.want !== url) return false;
  img.src = objectUrl;
  return true;
}

// Loads images one at a time (heatmaps cost the worker a second each); reset() drops what is stale.
export class ImageQueue {
  #pending = [];
  #busy = false;

  reset() {
    this.#pending = [];
  }

  add(img, url) {
    if (objectUrls.has(url)) {
      img.src = objectUrls.get(url);
      return;
    }
    this.#pending.push([img, url]);
    this.#next();
  }

  async #next() {
    if (this.#busy) return;
    this.#busy = true;
    while (this.#pending.length) {
      const [img, url] = this.#pending.shift();
      try {
        await showImage(img, url);
      } catch (error) {
        img.alt = `${img.alt} (not available: ${error.message})`;
      }
    }
    this.#busy = false;
  }
}
