"""ModelRepository: versions, resolution, the folder-name rule, reload and its observers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.config import Settings
from service.serving.card import ModelCard
from service.serving.repository import ModelLoadError, ModelRepository


def add_version(root: Path, shipped: Path, folder: str, card_version: str | None = None) -> Path:
    """The shipped v1 copied under `folder`, its card naming `card_version` (default: folder)."""
    dst = root / "mnist-cnn" / folder
    shutil.copytree(shipped / "mnist-cnn" / "1", dst)
    card = ModelCard.read(dst)
    card.version = card_version or folder
    card.write(dst)
    return dst


def repo(root: Path, **kw: object) -> ModelRepository:
    return ModelRepository(Settings(model_repository=root, device="cpu", **kw))  # type: ignore[arg-type]


def test_repository_resolves_newest_pinned_and_missing(tmp_path: Path, shipped_models) -> None:
    for v in ("1", "3"):
        add_version(tmp_path, shipped_models, v)
    assert repo(tmp_path).versions() == ["1", "3"]
    assert repo(tmp_path).resolve().name == "3"
    assert repo(tmp_path, model_version="1").resolve().name == "1"
    assert repo(tmp_path).resolve("1").name == "1"
    with pytest.raises(ModelLoadError, match="available: 1, 3"):
        repo(tmp_path).resolve("2")
    with pytest.raises(ModelLoadError, match="no versions"):
        repo(tmp_path, model_name="other").resolve()


@pytest.mark.parametrize("version", ["²", "1" * 256, "1/../3", "-1"])
def test_repository_refuses_malformed_versions(
    tmp_path: Path, shipped_models: Path, version: str
) -> None:
    add_version(tmp_path, shipped_models, "1")
    with pytest.raises(ModelLoadError, match="1 to 18 ASCII digits"):
        repo(tmp_path).resolve(version)


def test_repository_refuses_a_card_naming_another_version(
    tmp_path: Path, shipped_models: Path
) -> None:
    add_version(tmp_path, shipped_models, "2", card_version="1")
    with pytest.raises(ModelLoadError, match="holds a card for version 1: the folder name is"):
        repo(tmp_path).load()


async def test_repository_reload_switches_notifies_and_keeps_serving_on_refusal(
    tmp_path: Path, shipped_models: Path
) -> None:
    add_version(tmp_path, shipped_models, "1")
    models = repo(tmp_path, max_batch_size=1)
    seen: list[str] = []
    models.serve(models.load())
    models.subscribe(lambda m: seen.append(m.version))
    first = models.current
    assert seen == ["1"]

    same = await models.reload()
    assert not same.switched
    assert models.current is first
    assert seen == ["1"]

    add_version(tmp_path, shipped_models, "2")
    done = await models.reload()
    assert done.switched
    assert (done.previous, done.current) == (first, models.current)
    assert models.current.version == "2"
    assert seen == ["1", "2"]

    add_version(tmp_path, shipped_models, "3", card_version="2")
    with pytest.raises(ModelLoadError, match="folder name is the version"):
        await models.reload()
    with pytest.raises(ModelLoadError, match="not found"):
        await models.reload("9")
    assert models.current.version == "2"
    assert seen == ["1", "2"]
