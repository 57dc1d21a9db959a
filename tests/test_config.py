"""Configuration: embedded defaults need nothing; env vars and a TOML file override them; keys map to tenants."""

from __future__ import annotations

import pytest

from kdcvg.auth import ApiKeys
from kdcvg.config import Settings


def test_defaults_need_no_configuration(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("KDCVG_"):
            monkeypatch.delenv(name)
    s = Settings()
    assert s.index_backend == "edge" and s.encoder_precision == "int8"
    assert s.tenants_by_key() == {"kdcvg-dev-key": "default"}


def test_env_and_toml_file(monkeypatch, tmp_path):
    config = tmp_path / "kdcvg.toml"
    config.write_text('port = 6000\nindex_backend = "qdrant"\nqdrant_url = "http://qdrant:6333"\n')
    monkeypatch.setenv("KDCVG_CONFIG_FILE", str(config))
    monkeypatch.setenv("KDCVG_PORT", "7000")  # the environment wins over the file
    monkeypatch.setenv("KDCVG_ENCODER_PROVIDERS", "CUDAExecutionProvider,CPUExecutionProvider")
    monkeypatch.setenv("KDCVG_API_KEYS", '{"k1": "acme"}')
    s = Settings()
    assert s.port == 7000 and s.index_backend == "qdrant" and s.qdrant_url == "http://qdrant:6333"
    assert s.encoder_providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert s.tenants_by_key() == {"k1": "acme"}


def test_missing_config_file_and_unknown_keys_are_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("KDCVG_CONFIG_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError):
        Settings()
    monkeypatch.delenv("KDCVG_CONFIG_FILE")
    with pytest.raises(ValueError):
        Settings(no_such_option=1)


def test_api_keys_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# key tenant\nabc acme\n\nxyz globex  # comment\n")
    s = Settings(api_keys={}, api_keys_file=keys)
    assert s.tenants_by_key() == {"abc": "acme", "xyz": "globex"}
    keys.write_text("only-one-field\n")
    with pytest.raises(ValueError, match="expected `<api-key> <tenant>`"):
        Settings(api_keys={}, api_keys_file=keys).tenants_by_key()


def test_api_key_metadata_forms():
    keys = ApiKeys({"abc": "acme"})
    assert keys.tenant_of([("authorization", "Bearer abc")]) == "acme"
    assert keys.tenant_of([("authorization", "bearer  abc ")]) == "acme"
    assert keys.tenant_of([("x-api-key", "abc")]) == "acme"
    assert keys.tenant_of([("authorization", "Basic abc")]) is None
    assert keys.tenant_of([("authorization", "Bearer abd")]) is None
    assert keys.tenant_of(None) is None
    with pytest.raises(ValueError):
        ApiKeys({"": "acme"})
