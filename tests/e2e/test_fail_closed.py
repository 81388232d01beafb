"""Startup refuses settings that would silently turn authentication off (exit status 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.server import run_to_exit


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MNIST_API_KEYS": " , "}, "invalid setting api_keys: Value error, set but holds no key"),
        ({"MNIST_API_KEYS": "@{empty}"}, "invalid setting api_keys: Value error, set but holds"),
        ({"MNIST_API_KEYS": "@{blank}"}, "invalid setting api_keys: Value error, set but holds"),
        ({"MNIST_API_KEYS": "@{missing}"}, "cannot read the API keys file"),
        ({"MNIST_ADMIN_KEY": "  "}, "invalid setting admin_key: Value error, is whitespace only"),
    ],
)
def test_startup_refuses_keys_that_parse_to_nothing(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    (tmp_path / "empty").write_text("")
    (tmp_path / "blank").write_text("\n   \n\n")
    paths = {"empty": tmp_path / "empty", "blank": tmp_path / "blank", "missing": tmp_path / "x"}
    env = {k: v.format(**paths) for k, v in env.items()}
    done = run_to_exit(env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert message in lines[0], lines[0]
