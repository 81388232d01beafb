"""Synthetic non-digits and the style variants added to MNIST."""

from __future__ import annotations

import numpy as np
import torch

from tests.training.conftest import SAMPLE
from training.augment import add_styles, augment, random_affine
from training.negatives import MAKERS, make_negatives


def test_every_maker_draws_some_ink() -> None:
    rng = np.random.default_rng(3)
    for name, (maker, _) in MAKERS.items():
        ink = maker(rng)
        assert ink.ndim == 2, name
        assert 0 < float(ink.mean()) < 1, name


def test_make_negatives_returns_preprocessed_28x28_images() -> None:
    x, kinds = make_negatives(60, seed=5)
    assert 40 <= len(x) <= 60  # some noise may hold nothing the server would read
    assert x.shape[1:] == (28, 28)
    assert x.dtype == np.uint8
    assert len(kinds) == len(x)
    assert set(kinds) <= set(MAKERS)
    # What preprocessing makes of an image: light ink on dark, fitted into the centre.
    assert (x.reshape(len(x), -1).max(1) == 255).all()
    assert x[:, :2].max() == 0
    np.testing.assert_array_equal(make_negatives(60, seed=5)[0], x)  # seeded


def test_add_styles_crosses_sevens_and_flags_ones() -> None:
    sample = np.load(SAMPLE)
    images, labels = sample["images"], sample["labels"]
    new, new_labels = add_styles(images, labels, np.random.default_rng(0), share=0.5)
    assert set(new_labels.tolist()) == {1, 7}
    assert len(new) == len(new_labels) > 0
    # Each variant is one of the source digits with ink added, never removed.
    for variant, label in zip(new, new_labels, strict=True):
        sources = images[labels == label]
        covers = (variant[None] >= sources).all(axis=(1, 2))
        assert covers.any()
        grown = (variant[None].astype(int) - sources[covers].astype(int)).sum(axis=(1, 2))
        assert (grown > 0).all()


def test_flags_of_ones_are_steep_and_short_enough_not_to_make_a_seven() -> None:
    sample = np.load(SAMPLE)
    images, labels = sample["images"], sample["labels"]
    new, new_labels = add_styles(images, labels, np.random.default_rng(1), share=1.0)
    ones = images[labels == 1]
    checked = 0
    for variant in new[new_labels == 1]:
        source = ones[(variant[None] >= ones).all(axis=(1, 2))][0]
        ys, _ = np.nonzero(source > 64)
        top, bottom = int(ys.min()), int(ys.max())
        added = variant > source
        added[bottom - 1 :] = False  # the foot
        fy, fx = np.nonzero(added)
        if fy.size == 0:
            continue
        wide, tall = int(np.ptp(fx)), int(np.ptp(fy))
        assert wide <= 0.45 * (bottom - top + 1) + 3  # no longer than a 1's flag
        assert tall + 3 >= 0.7 * wide  # and steeper than a 7's bar
        assert fy.min() <= top + 3  # from the top of the stem
        checked += 1
    assert checked >= 5


def test_stretch_and_elastic_change_images_but_keep_the_batch_shape() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 8:20, 12:16] = 1.0
    plain = random_affine(x, torch.Generator().manual_seed(1), degrees=0, scale=(1, 1),
                          shift_px=0, shear_degrees=0, stretch=0.0)  # fmt: skip
    torch.testing.assert_close(plain, x)
    bent = augment(x, g, elastic=2.0)
    assert bent.shape == x.shape
    assert float(bent.min()) >= 0
    assert float(bent.max()) <= 1
    assert float((bent - x).abs().mean()) > 0.01
