"""Settings: env prefix, validation that fails fast, API keys from a list or a file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings, configuration_markdown


def test_settings_read_mnist_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("MNIST_DEVICE", "CUDA:1")
    monkeypatch.setenv("MNIST_BATCHING", "false")
    s = Settings()
    assert (s.max_batch_size, s.device, s.batching) == (16, "cuda:1", False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "greater than or equal to 1"),
        ({"max_batch_wait_ms": -1}, "greater than or equal to 0"),
        ({"max_batch_wait_ms": 5000, "request_timeout_s": 1}, "shorter than request_timeout"),
        ({"device": "tpu"}, "device must be"),
        ({"max_file_bytes": 10, "max_request_bytes": 5}, "cannot exceed"),
        ({"max_batch_size": 64, "max_queue_size": 8}, "at least max_batch_size"),
        ({"feedback": True, "feedback_url": "mysql://x/y"}, "postgresql:// URL"),
        ({"feedback_window_h": 48, "feedback_retention_h": 24}, "cannot exceed"),
        ({"shadow_version": "1"}, "needs feedback on"),
        ({"feedback": True, "shadow_version": "v1"}, "version number"),
        ({"shadow_rate": 1.5}, "less than or equal to 1"),
    ],
)
def test_settings_reject_inconsistent_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**kwargs)


def test_settings_api_keys_from_list_and_file(tmp_path: Path) -> None:
    assert Settings(api_keys=" a, b ,,c").api_key_list() == ["a", "b", "c"]
    keys = tmp_path / "keys"
    keys.write_text("k1\nk2\n\n")
    assert Settings(api_keys=f"@{keys}").api_key_list() == ["k1", "k2"]
    assert Settings().api_key_list() == []


@pytest.mark.parametrize("value", [" , ", ",", "  ", "@{blank}", "@{empty}", "@{missing}"])
def test_settings_api_keys_fail_closed_when_they_hold_no_key(tmp_path: Path, value: str) -> None:
    (tmp_path / "blank").write_text("\n  \n\n")
    (tmp_path / "empty").write_text("")
    value = value.format(blank=tmp_path / "blank", empty=tmp_path / "empty", missing=tmp_path / "x")
    with pytest.raises(ValidationError, match="holds no key|cannot read the API keys file"):
        Settings(api_keys=value)


def test_settings_admin_key_refuses_whitespace_only() -> None:
    with pytest.raises(ValidationError, match="whitespace only"):
        Settings(admin_key=" \t")
    assert Settings(admin_key="").admin_key == ""


def test_configuration_markdown_lists_every_setting_with_env_var_and_description() -> None:
    rows = {}
    for line in configuration_markdown().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("`MNIST_"):
            rows[cells[0].strip("`")] = cells
    assert list(rows) == list(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        _, env, default, meaning = rows[name]
        assert env == f"`MNIST_{name.upper()}`", name
        assert meaning == field.description, name
        assert default, name
    assert rows["max_batch_size"][2] == "`64`"
    assert rows["batching"][2] == "`true`"
    assert rows["model_version"][2] == "unset"
    assert rows["api_keys"][2] == "(empty)"


def test_docs_configuration_is_what_the_generator_prints() -> None:
    # docs/configuration.md is the user's reference for settings: it must not drift from code.
    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert doc.read_text(encoding="utf-8") == configuration_markdown(), (
        "docs/configuration.md is out of date with service.config.Settings: "
        "run `python -m service.config > docs/configuration.md`"
    )


def test_every_setting_has_a_flag_with_its_description_as_help() -> None:
    import argparse

    from service import __main__ as cli

    seen: dict[str, argparse.Action] = {}
    original = argparse.ArgumentParser.parse_args

    def capture(parser: argparse.ArgumentParser, argv: object = None) -> argparse.Namespace:
        seen.update({a.dest: a for a in parser._actions if a.dest != "help"})
        return original(parser, [])

    with pytest.MonkeyPatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", capture)
        cli.parse_args([])
    assert set(seen) == set(Settings.model_fields)
    for name, action in seen.items():
        field = Settings.model_fields[name]
        assert action.option_strings[0] == "--" + name.replace("_", "-")
        assert action.help == field.description, name
        if field.annotation is bool:
            assert "--no-" + name.replace("_", "-") in action.option_strings, name


def test_flags_reach_settings_and_are_validated_like_env_vars(tmp_path: Path) -> None:
    from service.__main__ import parse_args

    given = parse_args(
        ["--max-batch-size", "16", "--no-batching", "--log-level", "debug",
         "--model-version", "2", "--max-batch-wait-ms", "1.5", "--model-repository", str(tmp_path)]
    )  # fmt: skip
    s = Settings(_env_file=None, **given)  # type: ignore[call-arg]
    assert (s.max_batch_size, s.batching, s.log_level) == (16, False, "debug")
    assert (s.model_version, s.max_batch_wait_ms, s.model_repository) == ("2", 1.5, tmp_path)
    assert parse_args([]) == {}  # unset flags leave the environment and defaults alone
    with pytest.raises(SystemExit):
        parse_args(["--log-level", "loud"])
    with pytest.raises(ValidationError, match="max_batch_size"):
        Settings(_env_file=None, **parse_args(["--max-batch-size", "many"]))  # type: ignore[call-arg]


def test_settings_api_keys_file_is_read_at_start_up(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text('[[keys]]\nname = "app-a"\n')
    with pytest.raises(ValidationError, match=r"keys\.0\.key: Field required"):
        Settings(api_keys_file=keys)
    keys.write_text('[[keys]]\nname = "key-1"\nkey = "k"\n')
    with pytest.raises(ValueError, match="reuses the names of listed keys"):
        Settings(api_keys="other", api_keys_file=keys).key_ring()
    keys.write_text('[[keys]]\nname = "app-a"\nkey = "k"\n')
    ring = Settings(api_keys="other", api_keys_file=keys).key_ring()
    assert sorted(ring.names) == ["app-a", "key-1"]
