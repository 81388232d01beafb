"""Operator input (admin reload bodies, odd repository contents) gets a 4xx or a logged
refusal, never a 5xx or a traceback, against a real server."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from service.serving.card import ModelCard
from tests.e2e.test_ops import add_version
from tests.support.server import ServerProcess, run_to_exit

ADMIN = "admin-operator-7"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("repo")
    add_version(repo, "1")
    # str.isdigit() is True for "²" but int() refuses it: it must be ignored, not crash.
    add_version(repo, "²")
    proc = ServerProcess(env={"MNIST_MODEL_REPOSITORY": str(repo), "MNIST_ADMIN_KEY": ADMIN}).start(
        tmp_path_factory.mktemp("logs")
    )
    proc.repo = repo  # type: ignore[attr-defined]
    yield proc
    assert proc.stop() == 0, proc.log()
    assert "Traceback" not in proc.log()


def _reload(server: ServerProcess, body: dict | None = None) -> httpx.Response:
    return httpx.post(
        server.url + "/admin/reload",
        json=body,
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=60,
    )


def test_operator_version_folder_named_superscript_is_ignored(served) -> None:
    models = httpx.get(served.url + "/v1/models").json()
    assert models["available_versions"] == ["1"]
    assert models["served"]["version"] == "1"


@pytest.mark.parametrize(
    ("version", "status", "code", "message"),
    [
        ("1" * 256, 400, "invalid_input", "version: String should have at most 18 characters"),
        ("²", 400, "invalid_input", "version: String should match pattern"),
        ("12", 409, "reload_refused", "version 12 not found"),
    ],
)
def test_operator_reload_refuses_bad_versions_with_4xx(
    served, version: str, status: int, code: str, message: str
) -> None:
    r = _reload(served, {"version": version})
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert message in r.json()["error"], r.text


def test_operator_reload_refuses_broken_cards_and_keeps_serving(served) -> None:
    repo: Path = served.repo
    broken = add_version(repo, "2")
    (broken / "card.json").write_text('{"name": "mnist-cnn", "version": ')
    r = _reload(served)
    assert (r.status_code, r.json()["code"]) == (409, "reload_refused"), r.text
    assert "is not valid JSON" in r.json()["error"]
    (broken / "card.json").write_text('{"name": "mnist-cnn", "version": "²"}')
    r = _reload(served)
    assert (r.status_code, r.json()["code"]) == (409, "reload_refused"), r.text
    assert "is invalid at" in r.json()["error"]
    shutil.rmtree(broken)
    assert httpx.get(served.url + "/v1/models").json()["served"]["version"] == "1"


def _misnamed(repo: Path, folder: str, card_version: str) -> Path:
    """A version folder whose card names another version."""
    dst = add_version(repo, folder)
    card = ModelCard.read(dst)
    card.version = card_version
    card.write(dst)
    return dst


def test_operator_reload_refuses_a_folder_whose_card_names_another_version(served) -> None:
    misnamed = _misnamed(served.repo, "2", "1")
    try:
        r = _reload(served)
        assert (r.status_code, r.json()["code"]) == (409, "reload_refused"), r.text
        assert f"version folder {misnamed} holds a card for version 1" in r.json()["error"]
        assert "the folder name is the version" in r.json()["error"]
    finally:
        shutil.rmtree(misnamed)
    assert httpx.get(served.url + "/v1/models").json()["served"]["version"] == "1"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_operator_startup_refuses_a_folder_whose_card_names_another_version(
    tmp_path: Path, workers: str
) -> None:
    repo = tmp_path / "repo"
    add_version(repo, "1")
    misnamed = _misnamed(repo, "2", "1")
    done = run_to_exit({"MNIST_MODEL_REPOSITORY": str(repo)}, ["--workers", workers])
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: version folder {misnamed} holds a card for version 1: the folder name is "
        "the version; rename the folder or fix the card"
    )


def test_operator_reload_of_the_served_version_loads_nothing(served) -> None:
    r = _reload(served, {"version": "1"})
    assert r.status_code == 200, r.text
    assert r.json().pop("workers") == [{"pid": served.pid, "version": "1", "error": None}]
    assert {k: v for k, v in r.json().items() if k != "workers"} == {
        "name": "mnist-cnn",
        "version": "1",
        "previous_version": "1",
        "reloaded": False,
        "message": "already serving v1",
        "versions": ["1"],
    }
    served.wait_for_log("reload: already serving mnist-cnn v1")


def test_operator_startup_refuses_an_unparseable_newest_card(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_version(repo, "1")
    (add_version(repo, "2") / "card.json").write_text("not json")
    done = run_to_exit({"MNIST_MODEL_REPOSITORY": str(repo)})
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model card "), last
    assert "is not valid JSON" in last, last


def test_operator_startup_refuses_a_malformed_pinned_version(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_version(repo, "1")
    done = run_to_exit({"MNIST_MODEL_REPOSITORY": str(repo), "MNIST_MODEL_VERSION": "²"})
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: model version must be 1 to 18 ASCII digits, got '²'"
    )
