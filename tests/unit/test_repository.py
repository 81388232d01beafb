"""ModelRepository: versions, resolution, the folder-name rule, reload and its observers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.config import Settings
from service.errors import VersionNotServed
from service.serving.card import ModelCard
from service.serving.repository import MEMORY, ModelLoadError, ModelRepository, VersionPolicy


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


@pytest.mark.parametrize(
    ("text", "shown"),
    [(None, "latest:1"), ("latest:3", "latest:3"), (" ALL ", "all"),
     ("specific:3,1,01", "specific:1,3")],
)  # fmt: skip
def test_version_policy_parses_tritons_three_kinds(text: str | None, shown: str) -> None:
    assert str(VersionPolicy.parse(text)) == shown


@pytest.mark.parametrize("text", ["latest", "latest:0", "latest:x", "all:2", "specific:", "newest"])
def test_version_policy_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="latest:N"):
        VersionPolicy.parse(text)
    with pytest.raises(ValueError, match="version_policy"):
        Settings(version_policy=text)


def test_repository_plans_the_policys_versions_with_the_default(
    tmp_path: Path, shipped_models: Path
) -> None:
    for v in ("1", "2", "3"):
        add_version(tmp_path, shipped_models, v)
    plan = repo(tmp_path, version_policy="latest:2").plan()
    assert (plan.versions, plan.default) == (["2", "3"], "3")
    # A pinned older version is a rollback: the newest versions up to it.
    plan = repo(tmp_path, version_policy="latest:2", model_version="2").plan()
    assert (plan.versions, plan.default) == (["1", "2"], "2")
    assert repo(tmp_path).plan().versions == ["3"]
    assert repo(tmp_path, model_version="1").plan().versions == ["1"]
    assert repo(tmp_path, version_policy="all", model_version="1").plan().versions == [
        "1",
        "2",
        "3",
    ]
    plan = repo(tmp_path, version_policy="specific:1,3").plan()
    assert (plan.versions, plan.default) == (["1", "3"], "3")
    with pytest.raises(ModelLoadError, match="names version 4, not found"):
        repo(tmp_path, version_policy="specific:1,4").plan()
    with pytest.raises(ModelLoadError, match="version 2 is not one the version policy"):
        repo(tmp_path, version_policy="specific:1,3", model_version="2").plan()


def test_repository_refuses_a_policy_over_the_memory_bound(
    tmp_path: Path, shipped_models: Path
) -> None:
    for v in ("1", "2", "3"):
        add_version(tmp_path, shipped_models, v)
    one = MEMORY.mib(tmp_path / "mnist-cnn" / "1")
    assert repo(tmp_path, version_policy="all", max_model_memory_mib=3 * one).plan()
    with pytest.raises(ModelLoadError) as refused:
        repo(tmp_path, version_policy="all", max_model_memory_mib=3 * one - 1).plan()
    assert str(refused.value) == (
        f"version policy all serves versions 1, 2, 3, an estimated {3 * one} MiB, over "
        f"max_model_memory_mib ({3 * one - 1}): serve fewer versions or raise "
        "MNIST_MAX_MODEL_MEMORY_MIB"
    )


async def test_repository_serves_several_versions_and_reloads_the_policy(
    tmp_path: Path, shipped_models: Path
) -> None:
    for v in ("1", "2"):
        add_version(tmp_path, shipped_models, v)
    models = repo(tmp_path, version_policy="latest:2", max_batch_size=1)
    models.start()
    one, two = models.lookup("1"), models.lookup("2")
    assert models.current is two is models.lookup(None)
    assert (one.version, two.version) == ("1", "2")
    with pytest.raises(VersionNotServed, match="'3' is not found; served versions: 1, 2"):
        models.lookup("3")

    add_version(tmp_path, shipped_models, "3")
    done = await models.reload()
    assert (done.added, done.removed, done.versions) == (("3",), ("1",), ("2", "3"))
    assert models.lookup("2") is two  # kept, not loaded again
    assert models.current.version == "3"
    refused = pytest.raises(VersionNotServed, match="on disk but not served by the version policy")
    with refused as info:
        models.lookup("1")
    assert (info.value.code, info.value.status_code) == ("version_not_served", 404)
    assert not (await models.reload()).switched
