"""API tokens: named, hashed, scoped; auth fails closed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from inspectline.cli import app as cli
from inspectline.errors import ConfigError, ForbiddenError, UnauthorizedError
from inspectline.serving.auth import ANONYMOUS, TokenTable, add_token, read_tokens_file, remove_token


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


def test_a_changed_tokens_file_is_read_again_and_a_broken_one_keeps_the_tokens_in_force(tmp_path: Path, caplog):
    path = tmp_path / "tokens.yaml"
    camera = add_token(path, "cam-1", ["frames:write"])
    table = TokenTable.load(env_token="s3cret", tokens_file=path)
    assert table.reload_if_changed() is False  # nothing changed since the start
    reviewer = add_token(path, "ana", ["review"])  # written by rename: a new file
    assert table.reload_if_changed() is True
    assert table.authorize(f"Bearer {reviewer}", "review").name == "ana"
    remove_token(path, "cam-1")
    assert table.reload_if_changed() is True
    with pytest.raises(ForbiddenError, match="not valid"):
        table.authorize(f"Bearer {camera}", "frames:write")
    assert table.authorize("Bearer s3cret", "admin").name == "env"  # the environment's token stays

    for broken in ("tokens: [{name: ana}]\n", "\xff\xfe binary", None):  # invalid, not text, deleted
        if broken is None:
            path.unlink()
        else:
            path.write_bytes(broken.encode("latin-1"))
        assert table.reload_if_changed() is False
        assert table.authorize(f"Bearer {reviewer}", "review").name == "ana", broken
        with pytest.raises(UnauthorizedError):  # and never open
            table.authorize(None, "read")
    assert "the tokens read before stay in force (env, ana)" in caplog.text

    path.write_text("tokens: []\n")  # every named token revoked: auth stays on, no one is let in
    assert table.reload_if_changed() is True
    with pytest.raises(ForbiddenError):
        table.authorize(f"Bearer {reviewer}", "read")
    empty = TokenTable.load(env_token=None, tokens_file=path)
    assert empty.enabled
    with pytest.raises(UnauthorizedError):
        empty.authorize(None, "frames:write")


def test_inspect_tokens_list_and_remove(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inspect.yaml").write_text("service:\n  tokens_file: tokens.yaml\n")
    runner = CliRunner()
    assert (
        "tokens.yaml: no such file yet; `inspect tokens add` creates it"
        in runner.invoke(cli, ["tokens", "list"]).output
    )
    for name, scope in (("cam-line1", "frames:write"), ("ana", "review")):
        assert runner.invoke(cli, ["tokens", "add", name, "--scope", scope]).exit_code == 0
    listed = runner.invoke(cli, ["tokens", "list"])
    assert listed.exit_code == 0 and "2 tokens" in listed.output
    assert [line.split() for line in listed.output.splitlines()[1:]] == [
        ["cam-line1", "frames:write"],
        ["ana", "review"],
    ]
    removed = runner.invoke(cli, ["tokens", "remove", "cam-line1"])
    assert removed.exit_code == 0, removed.output
    assert "removed token cam-line1 (frames:write)" in removed.output and "without a restart" in removed.output
    assert [t.name for t in read_tokens_file(tmp_path / "tokens.yaml").tokens] == ["ana"]
    missing = runner.invoke(cli, ["tokens", "remove", "cam-line1"])
    assert missing.exit_code != 0
    assert "no token named 'cam-line1'" in str(missing.exception) and "its tokens: ana" in str(missing.exception)
