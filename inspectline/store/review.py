"""Review files: export frames for engineers to label elsewhere, and import their labels back.

Two formats, both behind ``inspect review export|import``:

* **CSV**, for a spreadsheet: one row per frame (:data:`CSV_COLUMNS`). Fill in ``label`` (ok/defective)
  and optionally ``labelled_by``; rows with an empty label are left alone.
* **Label Studio** JSON tasks. Create a project with :data:`LABEL_STUDIO_CONFIG` as its labelling
  interface, import the tasks from :func:`export_label_studio` (each carries the model's verdict as a
  pre-annotation, scored by confidence, so "sort by prediction score" puts the least sure frames first),
  label, then export the project as JSON and pass it to :func:`import_label_studio`. The images are
  fetched by the browser from ``{base_url}/v1/frames/{id}/image``, so Label Studio users must be able to
  reach the inspection service.

Rows and tasks name their frame by store ``id``, or by ``line_id`` + ``camera_id`` + ``frame_id`` (a
camera's frame ids are only unique on its line). A row that names camera and frame but no line is taken
when exactly one stored frame matches, and is a problem otherwise.

Imports are all or nothing: every row or task is checked first (known frame, valid label, a reviewer),
and if any is wrong nothing is applied and the :class:`InvalidLabelError` lists every problem with its
row or task number, so a file can be fixed in one pass.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inspectline.errors import InvalidLabelError
from inspectline.store.frames import FrameStore
from inspectline.store.records import (
    LABELS,
    FrameKey,
    LabelUpdate,
    StoredFrame,
    normalize_label,
    normalize_reviewer,
)

DEFAULT_BASE_URL = "http://localhost:8000"
CSV_COLUMNS = (
    "id",
    "camera_id",
    "frame_id",
    "line_id",
    "part_id",
    "received_at",
    "verdict",
    "defect_probability",
    "threshold",
    "model_version",
    "label",
    "labelled_by",
    "image_url",
)
LABEL_STUDIO_CHOICES = {"ok": "OK", "defective": "Defective"}  # our label -> Label Studio choice

LABEL_STUDIO_CONFIG = """\
<View>
  <!-- inspectline review queue: one frame per task, the model's verdict pre-selected. -->
  <Header value="Line $line_id, camera $camera_id, frame $frame_id: model said $verdict (p=$defect_probability)"/>
  <Image name="image" value="$image" zoom="true" zoomControl="true"/>
  <Choices name="verdict" toName="image" choice="single-radio" showInline="true" required="true">
    <Choice value="OK"/>
    <Choice value="Defective"/>
  </Choices>
</View>
"""

_MAX_LISTED = 25


@dataclass(frozen=True)
class ImportReport:
    """What an import did: labels applied, already present (untouched), and entries without a label."""

    source: str
    applied: int
    unchanged: int
    skipped: int

    def summary(self) -> str:
        return (
            f"{self.source}: {self.applied} labels applied, {self.unchanged} already set, "
            f"{self.skipped} without a label"
        )


@dataclass(frozen=True)
class _Entry:
    """One labelled row or task, before it is checked against the store."""

    where: str  # "row 7" / "task 3 (Label Studio id 41)", for error messages
    id: int | None
    pair: tuple[str, str] | None  # (camera_id, frame_id)
    line: str | None  # with ``pair``, names one frame; without it, the pair must be unique in the store
    label: str
    reviewer: str | None
    at: datetime | None = None


def image_url(base_url: str, frame_id: int) -> str:
    return f"{base_url.rstrip('/')}/v1/frames/{frame_id}/image"


# --- CSV -----------------------------------------------------------------------------------------
def export_csv(store: FrameStore, out: Path, *, base_url: str = DEFAULT_BASE_URL, **filters: Any) -> int:
    """Write the frames matching ``filters`` (as for ``FrameStore.query``; all of them unless ``limit``) to ``out``.

    ``image_url`` is empty for frames whose image was not kept. Returns the number of rows written.
    """
    n = 0
    with Path(out).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for f in store.iter_query(**filters):
            writer.writerow(
                [
                    f.id,
                    f.camera_id,
                    f.frame_id,
                    f.line_id,
                    f.part_id or "",
                    f.received_at.isoformat(),
                    f.verdict,
                    f.defect_probability,
                    f.threshold,
                    f.model_version,
                    f.label or "",
                    f.labelled_by or "",
                    image_url(base_url, f.id) if f.image_sha256 else "",
                ]
            )
            n += 1
    return n


def import_csv(store: FrameStore, path: Path, reviewer_default: str | None = None) -> ImportReport:
    """Apply the labels of a review CSV; rows are found by ``id`` or by [``line_id`` +] ``camera_id`` + ``frame_id``.

    Row numbers in errors count the header as row 1, as a spreadsheet shows them.
    """
    path = Path(path)
    try:
        entries, problems, skipped = _read_csv(path, reviewer_default)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        msg = f"cannot read review file {path}: {exc}; expected a UTF-8 CSV as written by `inspect review export`"
        raise InvalidLabelError(msg) from None
    return _apply(store, str(path), entries, problems, skipped)


def _read_csv(path: Path, reviewer_default: str | None) -> tuple[list[_Entry], list[str], int]:
    with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: spreadsheets often prepend a BOM
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or [])
        if "label" not in columns or not ("id" in columns or {"camera_id", "frame_id"} <= columns):
            msg = (
                f"{path}: columns {sorted(columns)} do not identify frames and labels; a review CSV needs 'label' and "
                "either 'id' or both 'camera_id' and 'frame_id', best with 'line_id' (as written by "
                "`inspect review export`)"
            )
            raise InvalidLabelError(msg)
        entries, problems, skipped = [], [], 0
        for number, row in enumerate(reader, start=2):
            label = (row.get("label") or "").strip()
            if not label:
                skipped += 1
                continue
            where = f"row {number}"
            raw_id = (row.get("id") or "").strip()
            camera, frame = (row.get("camera_id") or "").strip(), (row.get("frame_id") or "").strip()
            line = (row.get("line_id") or "").strip() or None
            if raw_id and not (raw_id.isascii() and raw_id.isdigit()):
                problems.append(f"{where}: id {raw_id!r} is not a frame id (a whole number)")
                continue
            if not raw_id and not (camera and frame):
                problems.append(f"{where}: neither an id nor both camera_id and frame_id")
                continue
            reviewer = (row.get("labelled_by") or "").strip() or reviewer_default
            entries.append(
                _Entry(
                    where,
                    int(raw_id) if raw_id else None,
                    (camera, frame) if camera and frame else None,
                    line,
                    label,
                    reviewer,
                )
            )
    return entries, problems, skipped


# --- Label Studio --------------------------------------------------------------------------------
def export_label_studio(store: FrameStore, base_url: str = DEFAULT_BASE_URL, **filters: Any) -> list[dict]:
    """Label Studio tasks for the frames matching ``filters`` that have an image (nothing to look at otherwise)."""
    tasks = []
    for f in store.iter_query(has_image=True, **filters):
        choice = LABEL_STUDIO_CHOICES["defective" if f.defect_probability >= f.threshold else "ok"]
        tasks.append(
            {
                "id": f.id,
                "data": {
                    "image": image_url(base_url, f.id),
                    "store_id": f.id,
                    "frame_id": f.frame_id,
                    "camera_id": f.camera_id,
                    "line_id": f.line_id,
                    "part_id": f.part_id,
                    "received_at": f.received_at.isoformat(),
                    "verdict": f.verdict,
                    "defect_probability": round(f.defect_probability, 4),
                    "model_version": f.model_version,
                },
                "predictions": [
                    {
                        "model_version": f.model_version,
                        "score": f.confidence,
                        "result": [
                            {
                                "from_name": "verdict",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": [choice]},
                            }
                        ],
                    }
                ],
            }
        )
    return tasks


def import_label_studio(store: FrameStore, tasks: Sequence[dict], reviewer_default: str | None = None) -> ImportReport:
    """Apply the labels of a Label Studio JSON export.

    Per task, cancelled (skipped) annotations are ignored and the latest remaining one wins. Its author is
    ``completed_by``'s e-mail when the export expands users, else ``reviewer_default``, else
    ``label-studio-user-<id>``. Tasks are found by ``data.store_id`` or [``data.line_id`` +] ``data.camera_id``
    + ``data.frame_id``.
    """
    if not isinstance(tasks, (list, tuple)):
        msg = f"a Label Studio export is a JSON list of tasks, not {type(tasks).__name__}; export the project as JSON"
        raise InvalidLabelError(msg)
    entries, problems, skipped = [], [], 0
    for number, task in enumerate(tasks, start=1):
        where = f"task {number}" + (
            f" (Label Studio id {task['id']})" if isinstance(task, dict) and "id" in task else ""
        )
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            problems.append(f"{where}: not a Label Studio task (an object with 'data')")
            continue
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        if not annotations:
            skipped += 1
            continue
        latest = max(
            enumerate(annotations),
            key=lambda item: (_annotated_at(item[1]) or datetime.min.replace(tzinfo=timezone.utc), item[0]),
        )[1]
        label, problem = _choice(latest)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        data = task["data"]
        store_id = data.get("store_id")
        if store_id is not None and not (str(store_id).isascii() and str(store_id).isdigit()):
            problems.append(f"{where}: data.store_id {store_id!r} is not a frame id (a whole number)")
            continue
        camera, frame, line = data.get("camera_id"), data.get("frame_id"), data.get("line_id")
        pair = (str(camera), str(frame)) if camera not in (None, "") and frame not in (None, "") else None
        if store_id is None and pair is None:
            problems.append(f"{where}: data has neither store_id nor both camera_id and frame_id")
            continue
        entries.append(
            _Entry(
                where,
                int(store_id) if store_id is not None else None,
                pair,
                str(line) if line not in (None, "") else None,
                label,
                _author(latest.get("completed_by"), reviewer_default),
                _annotated_at(latest),
            )
        )
    return _apply(store, "Label Studio export", entries, problems, skipped)


def _choice(annotation: dict) -> tuple[str, str | None]:
    """(label, None) from an annotation's verdict choice, or ("", problem)."""
    results = [r for r in annotation.get("result") or [] if isinstance(r, dict) and r.get("type") == "choices"]
    named = [r for r in results if r.get("from_name") == "verdict"] or results
    if len(named) != 1:
        return "", f"annotation has {len(named)} choice results; expected one named 'verdict' (see LABEL_STUDIO_CONFIG)"
    choices = (named[0].get("value") or {}).get("choices") or []
    mapped = {v.lower(): k for k, v in LABEL_STUDIO_CHOICES.items()}
    if len(choices) != 1 or not isinstance(choices[0], str) or choices[0].strip().lower() not in mapped:
        return "", f"choice {choices!r} is not exactly one of {', '.join(LABEL_STUDIO_CHOICES.values())}"
    return mapped[choices[0].strip().lower()], None


def _author(completed_by: Any, reviewer_default: str | None) -> str | None:
    if isinstance(completed_by, dict) and completed_by.get("email"):
        return str(completed_by["email"])
    if reviewer_default:
        return reviewer_default
    user_id = completed_by.get("id") if isinstance(completed_by, dict) else completed_by
    return f"label-studio-user-{user_id}" if user_id is not None else None


def _annotated_at(annotation: dict) -> datetime | None:
    for name in ("updated_at", "created_at"):
        value = annotation.get(name)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))  # Python 3.10 does not read "Z"
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None


# --- shared: check everything, then apply in one transaction -----------------------------------
def _apply(store: FrameStore, source: str, entries: list[_Entry], problems: list[str], skipped: int) -> ImportReport:
    by_id = store.get_many(e.id for e in entries if e.id is not None)
    by_key = store.find_many((e.line, *e.pair) for e in entries if e.id is None and e.pair and e.line)
    by_pair = store.find_by_camera(e.pair for e in entries if e.id is None and e.pair and not e.line)
    chosen: dict[int, tuple[_Entry, LabelUpdate]] = {}
    for e in entries:
        frame, problem = _resolve(e, by_id, by_key, by_pair)
        if problem is None and not (e.reviewer or "").strip():
            problem = (
                "no reviewer: the file does not say who labelled this frame; fill it in or pass a default reviewer"
            )
        if problem is None:
            try:
                update = LabelUpdate(frame.id, normalize_label(e.label), normalize_reviewer(e.reviewer), e.at)
            except InvalidLabelError as exc:
                problem = str(exc)
        if problem is None and frame.id in chosen and chosen[frame.id][1].label != update.label:
            problem = f"frame {frame.id} is also labelled {chosen[frame.id][1].label!r} by {chosen[frame.id][0].where}"
        if problem is not None:
            problems.append(f"{e.where}: {problem}")
        elif frame.id not in chosen:
            chosen[frame.id] = (e, update)
    if problems:
        listed = problems[:_MAX_LISTED] + (
            [f"... and {len(problems) - _MAX_LISTED} more"] if len(problems) > _MAX_LISTED else []
        )
        msg = (
            f"{source}: {len(problems)} problem(s), nothing was imported (labels are {', '.join(LABELS)}):\n  "
            + "\n  ".join(listed)
        )
        raise InvalidLabelError(msg)
    frames = {f.id: f for f in (*by_id.values(), *by_key.values(), *(f for m in by_pair.values() for f in m))}
    todo = [u for _, u in chosen.values() if (frames[u.id].label, frames[u.id].labelled_by) != (u.label, u.reviewer)]
    store.set_labels(todo)
    return ImportReport(source=source, applied=len(todo), unchanged=len(chosen) - len(todo), skipped=skipped)


def _resolve(
    e: _Entry,
    by_id: dict[int, StoredFrame],
    by_key: dict[FrameKey, StoredFrame],
    by_pair: dict[tuple[str, str], list[StoredFrame]],
) -> tuple[StoredFrame | None, str | None]:
    """The frame an entry names; when it names both an id and line/camera/frame ids, they must agree."""
    if e.id is not None:
        frame = by_id.get(e.id)
        if frame is None:
            return None, f"no stored frame has id {e.id}"
        named = FrameKey(e.line or frame.line_id, *(e.pair or (frame.camera_id, frame.frame_id)))
        if named != frame.key:
            return None, (
                f"id {e.id} is frame {frame.key} in this store, not {named}; was the file exported from another store?"
            )
        return frame, None
    camera, frame_id = e.pair
    if e.line is not None:
        frame = by_key.get(FrameKey(e.line, camera, frame_id))
        if frame is None:
            return None, f"no stored frame from line {e.line!r}, camera {camera!r} has frame_id {frame_id!r}"
        return frame, None
    matches = by_pair.get(e.pair, [])
    if len(matches) == 1:
        return matches[0], None
    if not matches:
        return None, f"no stored frame from camera {camera!r} has frame_id {frame_id!r}"
    lines = ", ".join(repr(f.line_id) for f in matches)
    return None, (
        f"camera {camera!r} sent frame_id {frame_id!r} on {len(matches)} lines ({lines}); "
        "add a line_id column (or data.line_id) to say which one"
    )
