// Review queue: least sure first, one key per label, undo. Frames come from GET /v1/frames a page at a time.
import { api, fill, fmt, markReady, notice, refill, session, showImage, start } from "./common.js";

const me = await start();
const PAGE = 50;
const form = document.getElementById("filters");
const query = new URLSearchParams(location.search);
for (const [key, value] of query) if (form.elements[key]) form.elements[key].value = value;
const filters = Object.fromEntries(["line", "camera", "verdict", "since", "until"].map((k) => [k, query.get(k)]));
filters.labelled = query.get("labelled") ?? "false";
const toReview = filters.labelled === "false";

const panel = document.querySelector(".frame-panel");
const facts = document.querySelector(".facts");
const image = document.getElementById("frame-image");
const caption = document.getElementById("frame-caption");
const said = document.getElementById("said");
const reviewerInput = document.getElementById("reviewer-name");
reviewerInput.value = session.reviewer();
reviewerInput.addEventListener("change", () => session.setReviewer(reviewerInput.value.trim()));
if (!me.may_review) {
  for (const button of document.querySelectorAll(".actions [data-action]")) {
    if (["ok", "defective", "undo", "heatmap"].includes(button.dataset.action)) button.disabled = true;
  }
}

const state = { frames: [], index: 0, left: 0, exhausted: false, heatmap: false, undo: [] };
const listed = new Set(); // ids that came from the listing (not a frame opened from the line view)

async function loadMore() {
  // Labelled frames leave a "to review" listing, so the next page starts after those still in it.
  const offset = state.frames.filter((f) => listed.has(f.id) && (!toReview || f.label === null)).length;
  const page = await api("/v1/frames", { params: { ...filters, order: "uncertainty", limit: PAGE, offset } });
  const known = new Set(state.frames.map((f) => f.id));
  state.frames.push(...page.frames.filter((f) => !known.has(f.id)));
  for (const f of page.frames) listed.add(f.id);
  state.left = page.total;
  state.exhausted = page.frames.length < PAGE;
}

function current() {
  return state.frames[state.index];
}

function show() {
  const frame = current();
  const done = frame === undefined;
  document.getElementById("queue-empty").hidden = !done;
  panel.querySelector(".frame").hidden = done;
  document.getElementById("left").textContent = toReview
    ? `${state.left} left to review`
    : `${state.left} frames match`;
  if (done) {
    showImage(image, null);
    refill(facts, {});
    refill(panel, {});
    return;
  }
  const fields = {
    ...frame,
    probability: fmt.num(frame.defect_probability),
    threshold: fmt.num(frame.threshold),
    confidence: fmt.num(frame.confidence),
    where: `${frame.line_id} / ${frame.camera_id}`,
    received: fmt.when(frame.received_at),
    label: frame.label ? `${frame.label} (${frame.labelled_by})` : "not labelled",
  };
  refill(panel, fields);
  refill(facts, fields);
  panel.dataset.frameId = frame.id;
  panel.dataset.verdict = frame.verdict;
  const showing = state.heatmap ? "heatmap of frame" : "frame";
  image.alt = `${showing} ${frame.frame_id} (${frame.verdict}, p ${fmt.num(frame.defect_probability)})`;
  caption.textContent = `${state.index + 1} of ${state.frames.length} loaded · ${state.heatmap ? "heatmap: red is evidence for DEFECTIVE" : "as the camera sent it"}`;
  if (!me.may_review) {
    showImage(image, null);
    caption.textContent = "Images need the review scope.";
  } else if (!frame.image_url) {
    showImage(image, null);
    caption.textContent = "The image of this frame was not kept (retention keeps DEFECTIVE/UNSURE and a sample of OK).";
  } else {
    const url = state.heatmap ? `/v1/frames/${frame.id}/heatmap` : frame.image_url;
    showImage(image, url).then(
      (current) => {
        if (current) image.dataset.shown = url;
      },
      (error) => {
        if (image.dataset.want === url) caption.textContent = error.message;
      },
    );
  }
  const next = state.frames.slice(state.index + 1, state.index + 9).map((f) =>
    fill("upcoming-row", { ...f, probability: fmt.num(f.defect_probability) }));
  document.getElementById("upcoming").replaceChildren(...next);
}

async function move(step) {
  state.index = Math.max(0, Math.min(state.index + step, state.frames.length));
  if (!state.exhausted && state.index >= state.frames.length - 5) await loadMore();
  show();
}

function reviewer() {
  const name = reviewerInput.value.trim() || session.reviewer();
  if (!name) {
    reviewerInput.focus();
    throw new Error("Type your name in the Reviewer field first: every label records who set it.");
  }
  session.setReviewer(name);
  return name;
}

function needReview() {
  if (!me.may_review) throw new Error("This token is read only: labelling needs a token with the review scope.");
}

async function label(kind) {
  needReview();
  const frame = current();
  if (!frame) return;
  const before = { label: frame.label, labelled_by: frame.labelled_by };
  const body = { label: kind, reviewer: reviewer() };
  state.frames[state.index] = await api(`/v1/frames/${frame.id}/label`, { method: "PUT", body });
  state.undo.push({ id: frame.id, before });
  if (toReview && before.label === null) state.left -= 1;
  said.textContent = `Frame ${frame.frame_id} labelled ${kind}.`;
  await move(1);
}

async function undo() {
  needReview();
  const last = state.undo.pop();
  if (!last) throw new Error("Nothing to undo.");
  const path = `/v1/frames/${last.id}/label`;
  const restored = last.before.label === null
    ? await api(path, { method: "DELETE", params: { reviewer: reviewer() } })
    : await api(path, { method: "PUT", body: { label: last.before.label, reviewer: last.before.labelled_by } });
  const index = state.frames.findIndex((f) => f.id === last.id);
  state.frames[index] = restored;
  state.index = index;
  if (toReview && last.before.label === null) state.left += 1;
  said.textContent = `Label of frame ${restored.frame_id} taken back.`;
  show();
}

function toggleHeatmap() {
  needReview();
  state.heatmap = !state.heatmap;
  document.querySelector("[data-action=heatmap]").setAttribute("aria-pressed", String(state.heatmap));
  show();
}

const ACTIONS = {
  ok: () => label("ok"),
  defective: () => label("defective"),
  skip: () => move(1),
  next: () => move(1),
  prev: () => move(-1),
  heatmap: toggleHeatmap,
  undo,
};
const KEYS = { o: "ok", d: "defective", s: "skip", ArrowRight: "next", ArrowLeft: "prev", h: "heatmap", u: "undo" };

// Actions run one after another, in the order pressed: "o o o" labels three frames.
let chain = Promise.resolve();
function run(name) {
  chain = chain.then(ACTIONS[name]).then(() => notice(""), (error) => notice(error.message, "error")).then(markReady);
}

document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select, textarea") || event.altKey || event.ctrlKey || event.metaKey) return;
  const name = KEYS[event.key];
  if (!name) return;
  event.preventDefault();
  run(name);
});
for (const button of document.querySelectorAll(".actions [data-action]")) {
  button.addEventListener("click", () => run(button.dataset.action));
}

const focus = query.get("focus");
if (focus) state.frames.push(await api(`/v1/frames/${Number(focus)}`));
await loadMore();
show();
markReady();
