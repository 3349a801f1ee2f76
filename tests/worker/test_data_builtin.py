"""builtin:// datasets: shapes, dtypes, preprocessing and the MNIST-1D generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrprobe.rules.data_refs import BUILTIN_DATASETS
from lrprobe.worker.intake.data.mnist1d import make_mnist1d, templates
from lrprobe.worker.intake.data.policy import DataPolicy
from lrprobe.worker.intake.data.references import open_dataset
from lrprobe.worker.intake.errors import IntakeError

POLICY = DataPolicy()

CASES = [
    # reference, kind, examples, feature shape, classes
    ("builtin://digits", "classification", 1797, (64,), 10),
    ("builtin://digits?shape=image", "classification", 1797, (1, 8, 8), 10),
    ("builtin://breast_cancer", "classification", 569, (30,), 2),
    ("builtin://wine", "classification", 178, (13,), 3),
    ("builtin://iris", "classification", 150, (4,), 3),
    ("builtin://diabetes", "regression", 442, (10,), None),
    ("builtin://mnist1d", "classification", 5000, (40,), 10),
    ("builtin://mnist1d?shape=channels&num_samples=200", "classification", 200, (1, 40), 10),
]


@pytest.mark.parametrize(("ref", "kind", "count", "shape", "classes"), CASES)
def test_builtin_dataset_loads_with_documented_shapes(
    ref: str, kind: str, count: int, shape: tuple[int, ...], classes: int | None
) -> None:
    data = open_dataset(ref, POLICY)

    assert data.kind == kind
    assert data.num_examples == count
    assert data.feature_shape == shape
    assert data.num_classes == classes
    assert data.x.dtype == torch.float32
    assert bool(torch.isfinite(data.x).all())
    if kind == "classification":
        assert data.y.dtype == torch.int64
        assert data.y.shape == (count,)
        assert set(data.y.tolist()) == set(range(classes or 0))
    else:
        assert data.y.dtype == torch.float32
        assert data.y.shape == (count,)


def test_every_builtin_is_covered_by_the_shape_table() -> None:
    covered = {ref.split("://")[1].split("?")[0] for ref, *_ in CASES}
    assert covered == set(BUILTIN_DATASETS)


@pytest.mark.parametrize("ref", ["builtin://wine", "builtin://diabetes"])
def test_tabular_features_are_standardised(ref: str) -> None:
    data = open_dataset(ref, POLICY)
    x = data.x.double()
    assert torch.allclose(x.mean(0), torch.zeros(x.shape[1], dtype=x.dtype), atol=1e-5)
    assert torch.allclose(
        x.std(0, unbiased=False), torch.ones(x.shape[1], dtype=x.dtype), atol=1e-4
    )


def test_diabetes_target_is_standardised() -> None:
    y = open_dataset("builtin://diabetes", POLICY).y.double()
    assert abs(float(y.mean())) < 1e-5
    assert abs(float(y.std(unbiased=False)) - 1.0) < 1e-4


def test_digit_images_are_the_flat_digits_reshaped() -> None:
    flat = open_dataset("builtin://digits", POLICY)
    image = open_dataset("builtin://digits?shape=image", POLICY)
    assert torch.equal(flat.y, image.y)
    # same pixels, different (global vs per-column) standardisation: same pixel ordering
    corr = np.corrcoef(image.x.reshape(-1, 64)[:, 36].numpy(), flat.x[:, 36].numpy())[0, 1]
    assert corr > 0.999
    assert abs(float(image.x.mean())) < 1e-5


def test_class_names_come_from_scikit_learn() -> None:
    assert open_dataset("builtin://iris", POLICY).class_names == (
        "setosa",
        "versicolor",
        "virginica",
    )


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(IntakeError) as info:
        open_dataset("builtin://cifar10", POLICY)
    assert info.value.code == "unknown_builtin_dataset"
    for name in BUILTIN_DATASETS:
        assert f"builtin://{name}" in info.value.message


@pytest.mark.parametrize(
    "ref",
    [
        "builtin://iris?shape=image",
        "builtin://digits?shape=cube",
        "builtin://mnist1d?num_samples=lots",
        "builtin://mnist1d?num_samples=99999999",
        "builtin://mnist1d?seed=-1",
        "builtin://digits/extra",
        "builtin://digits?shape=image&shape=flat",
    ],
)
def test_bad_builtin_options_are_refused(ref: str) -> None:
    with pytest.raises(IntakeError) as info:
        open_dataset(ref, POLICY)
    assert info.value.code == "invalid_data_ref"


def test_mnist1d_is_deterministic_for_a_seed() -> None:
    a = open_dataset("builtin://mnist1d?seed=7&num_samples=300", POLICY)
    b = open_dataset("builtin://mnist1d?num_samples=300&seed=7", POLICY)
    c = open_dataset("builtin://mnist1d?seed=8&num_samples=300", POLICY)
    assert torch.equal(a.x, b.x)
    assert torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)


def test_mnist1d_is_balanced_standardised_and_read_only_at_the_source() -> None:
    x, y = make_mnist1d(1000, 3)
    assert x.shape == (1000, 40)
    assert x.dtype == np.float32
    assert np.bincount(y).tolist() == [100] * 10
    assert abs(float(x.mean())) < 1e-5
    assert abs(float(x.std()) - 1.0) < 1e-4
    assert not x.flags.writeable
    data = open_dataset("builtin://mnist1d?seed=3&num_samples=1000", POLICY)
    data.x.add_(1.0)  # the dataset owns a copy
    assert abs(float(make_mnist1d(1000, 3)[0].mean())) < 1e-5


def test_mnist1d_templates_are_distinct_and_start_at_zero() -> None:
    t = templates()
    assert t.shape == (10, 12)
    assert np.allclose(t[:, 0], 0.0)
    distances = np.linalg.norm(t[:, None, :] - t[None, :, :], axis=-1)
    assert distances[~np.eye(10, dtype=bool)].min() > 0.05


def test_mnist1d_classes_are_harder_than_chance_but_not_linearly_trivial() -> None:
    # the character of MNIST-1D: a linear classifier beats chance (10 %) clearly but stays far
    # from perfect, because random shifts hide the templates (published set: logistic ≈ 32 %)
    x, y = make_mnist1d(2000, 0)
    features = torch.cat([torch.from_numpy(x.copy()).double(), torch.ones(2000, 1)], dim=1)
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(y.copy()), 10).double()
    train, test = slice(0, 1500), slice(1500, 2000)
    gram = features[train].T @ features[train] + 1e-2 * torch.eye(41, dtype=torch.float64)
    weights = torch.linalg.solve(gram, features[train].T @ one_hot[train])
    predicted = (features[test] @ weights).argmax(dim=1)
    accuracy = float((predicted == torch.from_numpy(y[test].copy())).double().mean())
    assert 0.15 < accuracy < 0.5
