"""API tokens: named, hashed, scoped; auth fails closed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from inspectline.cli import app as cli
from inspectline.errors import ConfigError, ForbiddenError, UnauthorizedError
from inspectline.serving.auth import ANONYMOUS, TokenTable, add_token, read_tokens_file


def test_scopes_imply_what_they_should_and_nothing_more(tmp_path: Path):
    path = tmp_path / "tokens.yaml"
    camera, reviewer, admin = (
        add_token(path, n, [s]) for n, s in (("cam-1", "frames:write"), ("ana", "review"), ("it", "admin"))
    )
    table = TokenTable.load(env_token=None, tokens_file=path)
    assert table.authorize(f"Bearer {camera}", "frames:write").name == "cam-1"
    with pytest.raises(ForbiddenError, match="'cam-1' has scopes \\['frames:write'\\]; this endpoint needs 'review'"):
        table.authorize(f"Bearer {camera}", "review")
    assert table.authorize(f"Bearer {reviewer}", "read").name == "ana"  # review implies read
    with pytest.raises(ForbiddenError):
        table.authorize(f"Bearer {reviewer}", "frames:write")
    assert {s for s in ("frames:write", "read", "review", "admin") if table.authorize(f"bearer {admin}", s)} == {
        "frames:write",
        "read",
        "review",
        "admin",
    }
    with pytest.raises(UnauthorizedError) as missing:
        table.authorize(None, "read")
    assert missing.value.headers == {"WWW-Authenticate": "Bearer"}
    for wrong in ("Bearer nope", f"Basic {camera}", camera):
        with pytest.raises(ForbiddenError, match="not valid"):
            table.authorize(wrong, "frames:write")


def test_the_file_keeps_hashes_only_and_names_are_unique(tmp_path: Path):
    path = tmp_path / "tokens.yaml"
    secret = add_token(path, "cam-1", ["frames:write"])
    assert secret not in path.read_text() and oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ConfigError, match="already exists"):
        add_token(path, "cam-1", ["read"])
    with pytest.raises(ConfigError, match="unknown scopes"):
        add_token(path, "cam-2", ["write-everything"])
    assert [t.name for t in read_tokens_file(path).tokens] == ["cam-1"]


def test_the_environment_token_has_every_scope_and_no_tokens_means_open(tmp_path: Path):
    table = TokenTable.load(env_token="s3cret", tokens_file=None)
    assert table.authorize("Bearer s3cret", "admin").name == "env"
    assert TokenTable.load(env_token="", tokens_file=None).authorize(None, "admin") is ANONYMOUS


def test_an_unreadable_tokens_file_stops_the_start(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot be read"):
        TokenTable.load(env_token=None, tokens_file=tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("tokens:\n  - {name: x, sha256: short, scopes: [read]}\n")
    with pytest.raises(ConfigError, match="sha256"):
        TokenTable.load(env_token=None, tokens_file=tmp_path / "bad.yaml")


def test_inspect_tokens_add_writes_where_the_service_reads(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inspect.yaml").write_text("service:\n  tokens_file: tokens.yaml\n")
    result = CliRunner().invoke(cli, ["tokens", "add", "cam-line1", "--scope", "frames:write"])
    assert result.exit_code == 0, result.output
    secret = result.output.splitlines()[1]
    table = TokenTable.load(env_token=None, tokens_file=tmp_path / "tokens.yaml")
    assert table.authorize(f"Bearer {secret}", "frames:write").name == "cam-line1"
