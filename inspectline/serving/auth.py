"""API tokens with scopes: a camera's token cannot relabel training data.

    frames:write   post frames for judgement (cameras, camera adapters, challenge runs)
    read           read verdicts, stored frames' metadata and the model (dashboards, line controllers)
    review         read images and label frames (quality engineers); implies read
    admin          everything, including the audit trail

Tokens come from two places:

* ``INSPECT_API_TOKEN`` in the service's environment: one token with every scope (named ``env``);
* ``service.tokens_file`` in ``inspect.yaml``: named tokens, each stored as the SHA-256 of the secret
  (the file never holds a secret; ``inspect tokens add NAME --scope frames:write`` writes an entry and
  prints the token once)::

      tokens:
        - {name: cam-line1-top, sha256: 9f86d0..., scopes: [frames:write]}
        - {name: ana, sha256: 60303a..., scopes: [review]}

With neither, the service is open (fine on loopback; ``inspect serve`` warns loudly when it binds beyond
it). With a tokens file, auth is on even while the file lists no token (then only the probes answer).

The environment token is read when the gateway starts. The tokens file is read then and again whenever
it changes (:meth:`TokenTable.reload_if_changed`, every ``reload_interval_s``), so ``inspect tokens
add`` and ``inspect tokens remove`` take effect in a running service within a second or so, with no
restart of the line's inspection. Auth fails closed: a tokens file that cannot be read stops the
gateway from starting; one that becomes unreadable or invalid later (deleted, an edit half done) keeps
the tokens last read in force, and the gateway logs why until the file is fixed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inspectline.errors import ConfigError, ForbiddenError, UnauthorizedError, validation_messages
from inspectline.files import atomic_write
from inspectline.ids import ID_PATTERN

SCOPES = ("frames:write", "read", "review", "admin")
_IMPLIED = {"frames:write": {"frames:write"}, "read": {"read"}, "review": {"review", "read"}, "admin": set(SCOPES)}
ENV_TOKEN_NAME = "env"

log = logging.getLogger("ray.serve")


class TokenEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=ID_PATTERN)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: tuple[str, ...] = Field(min_length=1)

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, scopes: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            msg = f"unknown scopes {unknown}; accepted: {', '.join(SCOPES)}"
            raise ValueError(msg)
        return scopes


class TokensFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: tuple[TokenEntry, ...] = ()


@dataclass(frozen=True)
class Principal:
    """Who made a request: the token's name (the actor in the audit trail) and what it may do."""

    name: str
    scopes: frozenset[str]


ANONYMOUS = Principal(name="anonymous", scopes=frozenset(SCOPES))


class TokenTable:
    """Checks ``Authorization: Bearer ...`` headers against the configured tokens."""

    def __init__(self, entries: tuple[TokenEntry, ...] = (), *, tokens_file: Path | None = None):
        self._fixed = entries  # the environment's token: for the life of the process
        self._entries = entries
        self._file = tokens_file
        self._file_state: tuple[int, int, int] | None = None

    @classmethod
    def load(cls, *, env_token: str | None, tokens_file: Path | None) -> TokenTable:
        entries: list[TokenEntry] = []
        if env_token:
            entries.append(TokenEntry(name=ENV_TOKEN_NAME, sha256=_digest(env_token), scopes=("admin",)))
        table = cls(tuple(entries), tokens_file=tokens_file)
        if tokens_file is not None:
            table._file_state = _file_state(tokens_file)  # before reading: a change made meanwhile is read next time
            table._entries = table._fixed + read_tokens_file(tokens_file).tokens  # unreadable: no start
        return table

    def reload_if_changed(self) -> bool:
        """Read the tokens file again if it changed since it was last read; True when the tokens changed.

        A file that cannot be read or is invalid keeps the tokens in force: a deleted file or an edit
        half done neither opens the service nor locks the line's cameras out. The error is logged once
        per state of the file.
        """
        if self._file is None:
            return False
        state = _file_state(self._file)
        if state == self._file_state:
            return False
        self._file_state = state
        try:
            tokens = read_tokens_file(self._file).tokens
        except ConfigError as exc:
            log.error("auth: %s; the tokens read before stay in force (%s)", exc, ", ".join(self.names) or "none")
            return False
        before, self._entries = self._entries, self._fixed + tokens
        if before == self._entries:
            return False
        log.info("auth: %s changed; tokens now %s", self._file, ", ".join(self.names) or "none (only probes answer)")
        return True

    @property
    def enabled(self) -> bool:
        return bool(self._entries) or self._file is not None

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    def authorize(self, authorization: str | None, scope: str) -> Principal:
        """The caller, if its token carries ``scope``; UnauthorizedError / ForbiddenError otherwise."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            msg = f"this endpoint needs 'Authorization: Bearer <token>' with the {scope!r} scope"
            raise UnauthorizedError(msg, headers={"WWW-Authenticate": "Bearer"})
        scheme, _, token = authorization.partition(" ")
        entry = self._match(token.strip()) if scheme.lower() == "bearer" else None
        if entry is None:
            msg = "the bearer token is not valid for this service"
            raise ForbiddenError(msg)
        granted = frozenset().union(*(_IMPLIED[s] for s in entry.scopes))
        if scope not in granted:
            msg = f"token {entry.name!r} has scopes {sorted(entry.scopes)}; this endpoint needs {scope!r}"
            raise ForbiddenError(msg)
        return Principal(name=entry.name, scopes=granted)

    def _match(self, token: str) -> TokenEntry | None:
        digest = _digest(token)
        found = None
        for entry in self._entries:  # compare with every entry: the time taken does not tell which matched
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return found


def read_tokens_file(path: Path) -> TokensFile:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        msg = f"tokens file {path} cannot be read: {exc.strerror or exc}"
        raise ConfigError(msg) from None
    except UnicodeDecodeError:
        msg = f"tokens file {path} is not a UTF-8 text file"
        raise ConfigError(msg) from None
    except yaml.YAMLError as exc:
        msg = f"tokens file {path} is not valid YAML: {exc}"
        raise ConfigError(msg) from None
    try:
        return TokensFile.model_validate(raw)
    except ValidationError as exc:
        msg = f"tokens file {path} is invalid:\n" + "\n".join(f"  {line}" for line in validation_messages(exc))
        raise ConfigError(msg) from None


def _file_state(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file: a rename into place (a new inode), an edit in place (size, mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def add_token(path: Path, name: str, scopes: list[str]) -> str:
    """Add a named token to ``path`` (created if missing) and return the secret, which is stored only hashed."""
    current = read_tokens_file(path) if Path(path).is_file() else TokensFile()
    if any(e.name == name for e in current.tokens):
        msg = f"a token named {name!r} already exists in {path}; remove it first or choose another name"
        raise ConfigError(msg)
    secret = secrets.token_urlsafe(32)
    try:
        entry = TokenEntry(name=name, sha256=_digest(secret), scopes=tuple(scopes))
    except ValidationError as exc:
        msg = "; ".join(validation_messages(exc))
        raise ConfigError(msg) from None
    _write_tokens(path, (*current.tokens, entry))
    return secret


def remove_token(path: Path, name: str) -> TokenEntry:
    """Revoke the token named ``name`` in ``path``; returns what was removed."""
    current = read_tokens_file(path).tokens
    removed = next((e for e in current if e.name == name), None)
    if removed is None:
        msg = f"no token named {name!r} in {path}; its tokens: {', '.join(e.name for e in current) or 'none'}"
        raise ConfigError(msg)
    _write_tokens(path, tuple(e for e in current if e is not removed))
    return removed


def _write_tokens(path: Path, tokens: tuple[TokenEntry, ...]) -> None:
    doc = TokensFile(tokens=tokens).model_dump(mode="json")
    atomic_write(Path(path), yaml.safe_dump(doc, sort_keys=False).encode(), mode=0o600)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
