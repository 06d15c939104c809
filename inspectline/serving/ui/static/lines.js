// Line view: polls GET /v1/lines and redraws each camera's card; thumbnails load one at a time.
import { ImageQueue, api, fill, fmt, markReady, refill, start } from "./common.js";

const me = await start();
const streams = document.getElementById("streams");
const updated = document.getElementById("updated");
const empty = document.getElementById("no-streams");
const pollMs = 1000 * Number(streams.dataset.pollSeconds);
const line = new URLSearchParams(location.search).get("line");
const images = new ImageQueue();
const cards = new Map();

function card(stream) {
  const key = `${stream.line_id}/${stream.camera_id}`;
  if (!cards.has(key)) {
    const element = fill("stream-card", stream);
    element.setAttribute("aria-label", `line ${stream.line_id}, camera ${stream.camera_id}`);
    cards.set(key, element);
    streams.append(element);
  }
  return cards.get(key);
}

function tile(frame) {
  const element = fill("frame-tile", {
    verdict: frame.verdict,
    probability: `p ${fmt.num(frame.defect_probability)}`,
    time: fmt.time(frame.received_at),
  });
  element.dataset.verdict = frame.verdict;
  element.dataset.frameId = frame.frame_id;
  const params = new URLSearchParams({ line: frame.line_id, camera: frame.camera_id, focus: frame.id });
  element.querySelector("a").href = `/ui/queue?${params}`;
  const img = element.querySelector("img");
  const heatmap = frame.verdict !== "OK" && frame.heatmap_url;
  img.alt = `${heatmap ? "heatmap of" : "frame"} ${frame.frame_id}, ${frame.verdict}`;
  const url = heatmap ? frame.heatmap_url : frame.image_url;
  if (me.may_review && url) images.add(img, url);
  else img.remove();
  return element;
}

function render(summary) {
  images.reset();
  for (const stream of summary.streams) {
    const element = refill(card(stream), {
      ...stream,
      throughput: stream.frames_last_minute,
      defect_ratio: fmt.pct(stream.defect_ratio),
      unsure_ratio: fmt.pct(stream.unsure_ratio),
      drift: stream.drift === "alarm" ? `ALARM: ${stream.drift_signals.join(", ")}` : stream.drift,
    });
    element.dataset.drift = stream.drift;
    element.querySelector(".tiles").replaceChildren(...stream.latest.map(tile));
  }
  empty.hidden = summary.streams.length > 0;
  const monitor = summary.monitor === "ok" ? "" : " · the line monitor did not answer";
  updated.textContent = `Updated ${fmt.time(summary.generated_at)}, model ${summary.served_version ?? "none"}${monitor}.`;
}

async function refresh() {
  try {
    render(await api("/v1/lines", { params: { line, latest: 6 } }));
    markReady();
  } catch (error) {
    updated.textContent = `Not updated: ${error.message}`;
  }
  setTimeout(refresh, pollMs);
}

refresh();
