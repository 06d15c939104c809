// Model page: GET /v1/models for what is in service and the history, GET /v1/models/{version} for one version.
import { ImageQueue, api, fill, fmt, markReady, refill, start } from "./common.js";

// Who is signed in and what is in service, asked at once: one round trip instead of two.
const [, overview] = await Promise.all([start(), api("/v1/models")]);
const select = document.getElementById("version");
const images = new ImageQueue();

refill(document.getElementById("in-service"), {
  production: overview.production ?? "none",
  shadow: overview.shadow ?? "none",
  served: overview.served ?? "not ready",
});
for (const v of overview.versions) {
  const marks = [v.version === overview.production && "production", v.version === overview.shadow && "shadow"];
  const option = new Option(`${v.version} ${marks.filter(Boolean).join(", ")}`.trim(), v.version);
  select.append(option);
}
rows("history", 7, overview.history.map((e) =>
  [fmt.when(e.at), e.action, e.subject, fmt.json(e.before), fmt.json(e.after), e.actor, e.reason]));

function rows(tableId, width, values) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...values.map((cells) => fill(`row-${width}`, { ...cells })));
  if (!values.length) {
    const row = fill(`row-${width}`, {});
    row.firstElementChild.textContent = "none";
    body.append(row);
  }
}

function expected(point) {
  return Object.entries(point.expected ?? {}).map(([k, v]) => `${k} ${k === "frames" ? v : fmt.num(v)}`).join(", ");
}

async function showVersion(name) {
  const m = await api(`/v1/models/${encodeURIComponent(name)}`);
  const point = m.operating_point;
  refill(document.getElementById("model-card"), {
    ...m,
    input: `${m.image_size} px, ${m.color_mode}`,
    created: fmt.when(m.created_at),
    temperature: fmt.num(m.temperature),
    tta_views: m.tta_views.join(", "),
    threshold: fmt.num(m.threshold),
    unsure_band: m.unsure_band === null ? "the service's configured band" : fmt.num(m.unsure_band),
    operating_point: point ? `${point.basis}, by ${point.actor}` : "none set: the card's threshold",
    card_threshold: `${fmt.num(m.card_threshold)} (${m.threshold_policy})`,
  });
  rows("metrics", 2, Object.entries(m.metrics).map(([k, v]) => [k, fmt.num(v, 4)]));
  rows("points", 7, m.operating_points.map((p) =>
    [fmt.when(p.at), fmt.num(p.threshold), p.unsure_band ?? "—", p.basis, expected(p), p.actor, p.reason]));
  rows("exports", 5, m.exports.map((e) =>
    [e.format, e.precision, e.passed ? "yes" : "NO", fmt.json(e.parity), fmt.when(e.at)]));
  const lineage = document.getElementById("lineage");
  lineage.replaceChildren(...m.lineage.map((v) => {
    const item = fill("lineage-item", {
      version: v.version,
      about: v.missing ? "(no longer in the registry)" : [`${v.arch}, created ${fmt.when(v.created_at)}`,
        ...Object.entries(v.metrics).map(([k, x]) => `${k} ${fmt.num(x)}`)].join(", "),
    });
    item.querySelector("a").href = `/ui/model?version=${encodeURIComponent(v.version)}`;
    return item;
  }));
  const report = document.getElementById("report");
  // Rendered by the service from the version's report.md (markdown-it, raw HTML escaped).
  report.innerHTML = m.report_html ?? "<p>This version has no evaluation report.</p>";
  for (const img of report.querySelectorAll("img[data-src]")) images.add(img, img.dataset.src);
  markReady();
}

const wanted = new URLSearchParams(location.search).get("version");
select.value = wanted ?? overview.production ?? overview.versions[0]?.version ?? "";
select.addEventListener("change", () => {
  history.replaceState(null, "", `/ui/model?version=${encodeURIComponent(select.value)}`);
  showVersion(select.value);
});
if (select.value) await showVersion(select.value);
else markReady();
