"""Model card validation and the checksum contract."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.serving.card import CardError, ModelCard, OutputSpec, list_versions
from tests.conftest import ROOT


@pytest.fixture
def version_dir(tmp_path: Path, shipped_models: Path) -> Path:
    dst = tmp_path / "mnist-cnn" / "1"
    shutil.copytree(shipped_models / "mnist-cnn" / "1", dst)
    return dst


def test_card_shipped_card_validates_and_matches_its_model(version_dir: Path) -> None:
    card = ModelCard.read(version_dir)
    assert card.verify(version_dir).name == "model.pt"
    assert card.metrics is not None
    assert card.metrics.accuracy >= 0.996
    assert card.input.shape == [-1, 1, 28, 28]
    assert 0 < card.input.normalization.std < 1


def test_card_tampered_model_is_rejected(version_dir: Path) -> None:
    with open(version_dir / "model.pt", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(CardError, match="checksum mismatch"):
        ModelCard.read(version_dir).verify(version_dir)


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("input", "shape"), [-1, 3, 32, 32], "input.shape"),
        (("input", "normalization", "std"), 0, "input.normalization.std"),
        (("sha256",), "not-a-digest", "sha256"),
        (("output", "labels"), ["0", "1"], "output"),
        (("version",), "one", "version"),
    ],
)
def test_card_tampered_fields_are_rejected(
    version_dir: Path, path: tuple[str, ...], value: object, where: str
) -> None:
    raw = json.loads((version_dir / "card.json").read_text())
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (version_dir / "card.json").write_text(json.dumps(raw))
    with pytest.raises(CardError, match=f"invalid at {where}"):
        ModelCard.read(version_dir)


def test_card_missing_or_not_json_is_a_card_error(version_dir: Path) -> None:
    (version_dir / "card.json").write_text("{nope")
    with pytest.raises(CardError, match="not valid JSON"):
        ModelCard.read(version_dir)
    (version_dir / "card.json").unlink()
    with pytest.raises(CardError, match="not found"):
        ModelCard.read(version_dir)


def test_list_versions_sorts_numerically_and_needs_a_card(version_dir: Path) -> None:
    root = version_dir.parent.parent
    shutil.copytree(version_dir, root / "mnist-cnn" / "10")
    (root / "mnist-cnn" / "2").mkdir()  # no card: not a version
    assert list_versions(root, "mnist-cnn") == [1, 10]
    assert list_versions(root, "other") == []


def _output(**kw: object) -> dict[str, object]:
    labels = [str(d) for d in range(10)]
    base: dict[str, object] = {"shape": [-1, 11], "labels": [*labels, "not_a_digit"]}
    return {**base, **kw}


def test_output_spec_eleven_classes_need_not_a_digit_last_and_a_threshold() -> None:
    spec = OutputSpec.model_validate(_output(reject_threshold=0.4))
    assert spec.classes == 11
    assert OutputSpec().classes == 10
    with pytest.raises(ValidationError, match="needs a reject_threshold"):
        OutputSpec.model_validate(_output())
    with pytest.raises(ValidationError, match="not_a_digit"):
        OutputSpec.model_validate(
            _output(labels=[*(str(d) for d in range(10)), "other"], reject_threshold=0.4)
        )
    with pytest.raises(ValidationError, match="needs the not_a_digit output class"):
        OutputSpec(reject_threshold=0.4)
    with pytest.raises(ValidationError):
        OutputSpec.model_validate(_output(reject_threshold=1.5))


def test_list_versions_ignores_names_that_are_not_ascii_numbers(version_dir: Path) -> None:
    root = version_dir.parent.parent
    for name in ("²", "٣", "1" * 19, "2a", "-3"):
        shutil.copytree(version_dir, root / "mnist-cnn" / name)
    assert "²".isdigit(), "the case that used to reach int() and raise"
    assert list_versions(root, "mnist-cnn") == [1]


def test_list_versions_unlistable_model_folder_is_a_card_error(
    version_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(self: Path) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    # Root reads any folder, so the denial is simulated at the one call that lists it.
    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(CardError, match="cannot list model folder .*: Permission denied"):
        list_versions(version_dir.parent.parent, "mnist-cnn")


def test_card_that_is_not_a_readable_file_is_a_card_error(version_dir: Path) -> None:
    (version_dir / "card.json").unlink()
    (version_dir / "card.json").mkdir()
    with pytest.raises(CardError, match="cannot read model card"):
        ModelCard.read(version_dir)
    (version_dir / "card.json").rmdir()
    (version_dir / "card.json").write_text("[" * 100_000)
    with pytest.raises(CardError, match="not valid JSON"):
        ModelCard.read(version_dir)


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(out.stdout.split())


def test_card_module_imports_no_server_and_no_torch() -> None:
    # The card is the contract training and serving share: it must not pull either in.
    loaded = _modules_after_import("service.serving.card")
    assert not {"torch", "fastapi", "starlette", "uvicorn"} & loaded, sorted(loaded)
    # Its package's __init__ is a docstring: importing the card runs no other module.
    others = {m for m in loaded if m.startswith("service.")} - {
        "service.serving",
        "service.serving.card",
    }
    assert not others, others


def test_training_imports_no_serving_module_but_the_card() -> None:
    loaded = _modules_after_import("training.train")
    served = {m for m in loaded if m.startswith("service.")}
    assert served <= {"service.serving", "service.serving.card"}, served
    assert "fastapi" not in loaded
