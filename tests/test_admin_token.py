"""The admin token is never printed: from the environment it is not shown at all; generated, it
is written to a 0600 file and only the file's path is announced."""

from __future__ import annotations

import stat

from fruitpipe.api.settings import TOKEN_ENV, local_token
from fruitpipe.commands.service import token_notice


def test_token_from_environment_is_not_shown(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "env-secret-123")
    said: list[str] = []
    assert local_token(tmp_path, announce=said.append) == "env-secret-123"
    assert not (tmp_path / "admin-token").exists() and said == []
    notice = token_notice(tmp_path)
    assert "env-secret-123" not in notice and TOKEN_ENV in notice


def test_generated_token_goes_to_a_0600_file_and_only_its_path_is_said(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    said: list[str] = []
    token = local_token(tmp_path, announce=said.append)
    path = tmp_path / "admin-token"
    assert path.read_text().strip() == token and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(said) == 1 and str(path) in said[0] and token not in said[0]
    notice = token_notice(tmp_path)
    assert token not in notice and f"TOKEN=$(cat {path})" in notice
    assert local_token(tmp_path) == token  # the same one on the next start


def test_token_file_readable_by_others_is_set_back_to_0600(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = tmp_path / "admin-token"
    path.write_text("restored-from-backup\n")
    path.chmod(0o644)
    said: list[str] = []
    assert local_token(tmp_path, announce=said.append) == "restored-from-backup"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "0600" in said[0]
    assert "restored-from-backup" not in said[0]
