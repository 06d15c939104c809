"""API tokens with scopes: a camera's token cannot relabel training data.

    frames:write   post frames for judgement (cameras, camera adapters, challenge runs)
    read           read verdicts, stored frames' metadata and the model (dashboards, line controllers)
    review         read images and label frames (quality engineers); implies read
    admin          everything, including the audit trail

Tokens come from two places, read once when the gateway starts (the process edge):

* ``INSPECT_API_TOKEN`` in the service's environment: one token with every scope (named ``env``);
* ``service.tokens_file`` in ``inspect.yaml``: named tokens, each stored as the SHA-256 of the secret
  (the file never holds a secret; ``inspect tokens add NAME --scope frames:write`` writes an entry and
  prints the token once)::

      tokens:
        - {name: cam-line1-top, sha256: 9f86d0..., scopes: [frames:write]}
        - {name: ana, sha256: 60303a..., scopes: [review]}

With neither, the service is open (fine on loopback; ``inspect serve`` warns loudly when it binds beyond
it). Auth fails closed: a configured source that cannot be read stops the gateway from starting.
"""

from __future__ import annotations

import hashlib
import hmac
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

    def __init__(self, entries: tuple[TokenEntry, ...] = ()):
        self._entries = entries

    @classmethod
    def load(cls, *, env_token: str | None, tokens_file: Path | None) -> TokenTable:
        entries: list[TokenEntry] = []
        if env_token:
            entries.append(TokenEntry(name=ENV_TOKEN_NAME, sha256=_digest(env_token), scopes=("admin",)))
        if tokens_file is not None:
            entries.extend(read_tokens_file(tokens_file).tokens)
        return cls(tuple(entries))

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    def authorize(self, authorization: str | None, scope: str) -> Principal:
        """The caller, if its token carries ``scope``; UnauthorizedError / ForbiddenError otherwise."""
        if not self._entries:
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
    except yaml.YAMLError as exc:
        msg = f"tokens file {path} is not valid YAML: {exc}"
        raise ConfigError(msg) from None
    try:
        return TokensFile.model_validate(raw)
    except ValidationError as exc:
        msg = f"tokens file {path} is invalid:\n" + "\n".join(f"  {line}" for line in validation_messages(exc))
        raise ConfigError(msg) from None


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
    doc = TokensFile(tokens=(*current.tokens, entry)).model_dump(mode="json")
    atomic_write(Path(path), yaml.safe_dump(doc, sort_keys=False).encode(), mode=0o600)
    return secret


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
