// Threshold what-if: GET /v1/whatif as the sliders move (debounced); POST the chosen point to commit it.
import { api, fmt, markReady, notice, refill, session, start } from "./common.js";

// Who is signed in and the versions to choose from, asked at once: one round trip instead of two.
const [me, models] = await Promise.all([start(), api("/v1/models")]);
const windowForm = document.getElementById("window");
const commitForm = document.getElementById("commit");
const query = new URLSearchParams(location.search);
const WINDOW = ["since", "until", "line", "camera", "model_version"];
const RATES = ["recall", "precision", "false_reject_rate", "unsure_share"];
const SVG = "http://www.w3.org/2000/svg";
const pairs = [["threshold", "threshold-number"], ["band", "band-number"]].map((ids) => ids.map((id) => document.getElementById(id)));
let last = null;
let timer = null;

for (const v of models.versions) windowForm.elements.model_version.append(new Option(v.version));
for (const key of WINDOW) if (query.get(key)) windowForm.elements[key].value = query.get(key);
if (!me.may_admin) {
  commitForm.querySelector("button").disabled = true;
  document.getElementById("committed").textContent = "Your token cannot commit: that needs the admin scope.";
}

function windowParams() {
  return Object.fromEntries(WINDOW.map((key) => [key, windowForm.elements[key].value.trim()]));
}

async function update(point = {}) {
  if (!me.may_review) return;
  let report;
  try {
    report = await api("/v1/whatif", { params: { ...windowParams(), ...point } });
  } catch (error) {
    notice(error.message, "error");
    return;
  }
  notice("");
  last = report;
  if (point.threshold === undefined) set(report.proposed.threshold, report.proposed.unsure_band); // the one in force
  const versions = report.model_versions.join(", ") || "none";
  document.getElementById("scored").textContent =
    `${report.frames} labelled frames of ${report.model_version} (versions in the window: ${versions}).`;
  document.getElementById("current-head").textContent =
    `in force (${fmt.num(report.current.threshold, 2)} ± ${fmt.num(report.current.unsure_band, 2)})`;
  document.getElementById("proposed-head").textContent =
    `proposed (${fmt.num(report.proposed.threshold, 2)} ± ${fmt.num(report.proposed.unsure_band, 2)})`;
  for (const row of document.querySelectorAll("#rates tr[data-rate]")) {
    for (const column of ["current", "proposed"]) {
      row.querySelector(`[data-col=${column}]`).textContent = fmt.pct(report[column][row.dataset.rate]);
    }
  }
  refill(document.getElementById("counts"), report.proposed);
  chart(report);
  markReady();
}

function set(threshold, band) {
  for (const [[range, number], value] of [[pairs[0], threshold], [pairs[1], band]]) {
    if (document.activeElement !== number) number.value = value.toFixed(2);
    range.value = value;
  }
}

function proposed() {
  return { threshold: Number(pairs[0][0].value), unsure_band: Number(pairs[1][0].value) };
}

for (const [range, number] of pairs) {
  const changed = (source, other) => () => {
    other.value = source.value;
    clearTimeout(timer);
    timer = setTimeout(() => update(proposed()), 150);
  };
  range.addEventListener("input", changed(range, number));
  number.addEventListener("change", changed(number, range));
}

function chart(report) {
  const svg = document.getElementById("chart");
  const [w, h, left, bottom, top] = [640, 300, 40, 30, 34];
  const x = (t) => left + t * (w - left - 30);
  const y = (v) => top + (1 - v) * (h - bottom - top);
  const parts = [];
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(el("line", { x1: x(0), x2: x(1), y1: y(v), y2: y(v), class: "grid" }));
    parts.push(el("text", { x: 4, y: y(v) + 4, class: "axis" }, v.toFixed(2)));
    parts.push(el("text", { x: x(v) - 10, y: h - 8, class: "axis" }, v.toFixed(2)));
  }
  // The legend sits above the plot, each name after a sample of its line's colour and dash pattern.
  let at = left;
  const legend = (cls, name) => {
    parts.push(el("line", { x1: at, x2: at + 22, y1: 12, y2: 12, class: cls }));
    parts.push(el("text", { x: at + 26, y: 16, class: "legend" }, name));
    at += 26 + name.length * 6 + 12; // about 6 px a character at the legend's 12 px
  };
  RATES.forEach((rate, i) => {
    const points = report.sweep.filter((p) => p[rate] !== null).map((p) => `${x(p.threshold)},${y(p[rate])}`);
    parts.push(el("polyline", { points: points.join(" "), class: `series s${i}` }));
    legend(`series s${i}`, rate.replaceAll("_", " "));
  });
  legend("marker current", "in force");
  legend("marker proposed", "proposed");
  parts.push(el("line", { x1: x(report.current.threshold), x2: x(report.current.threshold), y1: y(0), y2: y(1), class: "marker current" }));
  parts.push(el("line", { x1: x(report.proposed.threshold), x2: x(report.proposed.threshold), y1: y(0), y2: y(1), class: "marker proposed" }));
  svg.replaceChildren(...parts);
}

function el(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

windowForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const params = new URLSearchParams(Object.entries(windowParams()).filter(([, v]) => v));
  history.replaceState(null, "", `/ui/whatif?${params}`);
  update(proposed());
});

commitForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = document.getElementById("committed");
  const body = {
    ...proposed(),
    reason: commitForm.elements.reason.value.trim(),
    actor: session.reviewer() || me.name,
    ...Object.fromEntries(["since", "until", "line", "camera"].map((k) => [k, last?.window[k] ?? null])),
  };
  try {
    const point = await api(`/v1/models/${last.model_version}/operating-points`, { method: "POST", body });
    out.textContent = `Committed: threshold ${fmt.num(point.threshold, 2)} ± ${fmt.num(point.unsure_band, 2)} `
      + `for ${point.version} at ${fmt.when(point.at)}; the service switches to it within seconds.`;
  } catch (error) {
    out.textContent = `Not committed: ${error.message}`;
  }
});

if (!me.may_review) markReady();
else await update(Object.fromEntries(["threshold", "unsure_band"].filter((k) => query.get(k)).map((k) => [k, query.get(k)])));
