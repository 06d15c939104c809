"""The frame store: every judged frame, its image (by the retention policy) and its review label.

A library with no Ray and no HTTP in it; the service's recorder writes to it, the review endpoints and
``inspect review`` read and label through it, and ``inspect retrain`` learns from it.

    records.py    the value types (FrameRecord in, StoredFrame out) and their checks
    schema.py     the tables (SQLAlchemy Core, SQLite and PostgreSQL) and the schema version
    migrations.py bringing a store made by an older version up to the current schema, on open
    database.py   engine set-up, transactions, locks, errors
    images.py     content-addressed, atomically written image files on fsspec storage
    retention.py  which images are kept at write time, and age-based clean-up
    parts.py      the line's part verdicts: writing them and the parts API's filters
    frames.py     FrameStore, the one entry point
    review.py     CSV and Label Studio export / import of review labels
"""

from inspectline.store.frames import FrameStore
from inspectline.store.records import (
    IMAGE_FORMATS,
    LABELS,
    ORDERS,
    PART_VERDICTS,
    VERDICTS,
    CleanupReport,
    FrameKey,
    FrameRecord,
    LabelUpdate,
    PartRecord,
    ShadowVerdict,
    StoredFrame,
    StoredPart,
    check_record,
)
from inspectline.store.retention import keeps_image
from inspectline.store.review import (
    CSV_COLUMNS,
    LABEL_STUDIO_CONFIG,
    ImportReport,
    export_csv,
    export_label_studio,
    import_csv,
    import_label_studio,
)

__all__ = [
    "CSV_COLUMNS",
    "IMAGE_FORMATS",
    "LABELS",
    "LABEL_STUDIO_CONFIG",
    "ORDERS",
    "PART_VERDICTS",
    "VERDICTS",
    "CleanupReport",
    "FrameKey",
    "FrameRecord",
    "FrameStore",
    "ImportReport",
    "LabelUpdate",
    "PartRecord",
    "ShadowVerdict",
    "StoredFrame",
    "StoredPart",
    "check_record",
    "export_csv",
    "export_label_studio",
    "import_csv",
    "import_label_studio",
    "keeps_image",
]
