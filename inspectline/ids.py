"""The one definition of a valid line, camera, part or frame id.

Ids travel into metric labels, file names, database keys and MQTT topics, so they are bounded: 1 to 64
characters, letters, digits and ``_ . : -``, starting with a letter or a digit.
"""

from __future__ import annotations

import re
import uuid

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$"
ID_RE = re.compile(ID_PATTERN)
ID_RULE = "1-64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit"


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def check_id(value: object, name: str = "id") -> str:
    """``value`` if it is a valid id; ValueError naming the field, the value and the rule otherwise."""
    if not is_valid_id(value):
        msg = f"{name} {value!r} is not a valid id: use {ID_RULE}"
        raise ValueError(msg)
    return value  # type: ignore[return-value]


def new_frame_id() -> str:
    """A frame id no camera will ever send again (for frames posted without one)."""
    return f"gen-{uuid.uuid4().hex}"
