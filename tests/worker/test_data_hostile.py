"""A hostile corpus of local references and files: each is refused with its code, and nothing a
user sent is ever executed."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lrprobe.rules.data_refs import check_local_path
from lrprobe.worker.intake.data.policy import DataPolicy
from lrprobe.worker.intake.data.references import open_dataset
from lrprobe.worker.intake.errors import IntakeError


class Payload:
    """Pickles to a call of ``exec`` that writes a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        code = f"import pathlib; pathlib.Path({str(self.marker)!r}).write_text('executed')"
        return (exec, (code,))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    return data


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside"
    secret.mkdir()
    np.savez(secret / "secret.npz", x=np.ones((3, 2)), y=np.array([0, 1, 0]))
    return secret


@pytest.fixture
def policy(root: Path) -> DataPolicy:
    return DataPolicy(roots=(root,), max_bytes=1_000_000)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "EXECUTED"


def refused(code: str, ref: str, policy: DataPolicy) -> IntakeError:
    with pytest.raises(IntakeError) as info:
        open_dataset(ref, policy, block_size=2)
    assert info.value.code == code, info.value.message
    return info.value


def test_the_payload_really_executes_when_unpickled(tmp_path: Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.read_text() == "executed"


# --- paths ---------------------------------------------------------------------------------


def test_etc_passwd_outside_the_roots_is_refused(policy: DataPolicy) -> None:
    error = refused("data_ref_refused", "file:///etc/passwd", policy)
    assert "outside the data roots" in error.message


@pytest.mark.parametrize("dots", ["..", "%2e%2e", "%2E."])
def test_dot_dot_traversal_is_refused(
    root: Path, outside: Path, policy: DataPolicy, dots: str
) -> None:
    ref = f"file://{root}/{dots}/outside/secret.npz"
    error = refused("data_ref_refused", ref, policy)
    assert "'..'" in error.message


def test_symlinked_file_leading_outside_is_refused(
    root: Path, outside: Path, policy: DataPolicy
) -> None:
    (root / "innocent.npz").symlink_to(outside / "secret.npz")
    error = refused("data_ref_refused", (root / "innocent.npz").as_uri(), policy)
    assert "symbolic link" in error.message


def test_symlinked_directory_leading_outside_is_refused(
    root: Path, outside: Path, policy: DataPolicy
) -> None:
    (root / "sub").symlink_to(outside, target_is_directory=True)
    refused("data_ref_refused", (root / "sub" / "secret.npz").as_uri(), policy)


def test_symlink_to_etc_passwd_is_refused(root: Path, policy: DataPolicy) -> None:
    (root / "passwd.csv").symlink_to("/etc/passwd")
    refused("data_ref_refused", (root / "passwd.csv").as_uri(), policy)


def test_symlink_that_stays_inside_the_roots_is_followed(root: Path, policy: DataPolicy) -> None:
    np.savez(root / "real.npz", x=np.ones((2, 1)), y=np.array([0, 1]))
    (root / "alias.npz").symlink_to(root / "real.npz")
    assert open_dataset((root / "alias.npz").as_uri(), policy).num_examples == 2


def test_outside_path_that_links_into_the_roots_is_still_refused(
    root: Path, outside: Path, policy: DataPolicy
) -> None:
    np.savez(root / "real.npz", x=np.ones((2, 1)), y=np.array([0, 1]))
    (outside / "link.npz").symlink_to(root / "real.npz")
    refused("data_ref_refused", (outside / "link.npz").as_uri(), policy)


def test_image_class_folder_linking_outside_is_refused(
    root: Path, outside: Path, policy: DataPolicy
) -> None:
    (root / "imgs").mkdir()
    (root / "imgs" / "cats").symlink_to(outside, target_is_directory=True)
    refused("data_ref_refused", (root / "imgs").as_uri(), policy)


def test_image_file_linking_outside_is_refused(
    root: Path, outside: Path, policy: DataPolicy
) -> None:
    pytest.importorskip("PIL")
    (root / "imgs" / "cats").mkdir(parents=True)
    (outside / "x.png").write_bytes(b"\x89PNG")
    (root / "imgs" / "cats" / "x.png").symlink_to(outside / "x.png")
    refused("data_ref_refused", (root / "imgs").as_uri(), policy)


def test_a_root_that_is_itself_a_symlink_works(tmp_path: Path) -> None:
    real = tmp_path / "real-root"
    real.mkdir()
    np.savez(real / "d.npz", x=np.ones((2, 1)), y=np.array([0, 1]))
    linked = tmp_path / "linked-root"
    linked.symlink_to(real, target_is_directory=True)
    policy = DataPolicy(roots=(linked,))
    assert open_dataset((linked / "d.npz").as_uri(), policy).num_examples == 2


def test_named_pipe_is_refused_without_blocking(root: Path, policy: DataPolicy) -> None:
    os.mkfifo(root / "pipe.npz")
    refused("unsupported_data_format", (root / "pipe.npz").as_uri(), policy)


def test_directory_named_like_a_file_is_not_a_data_file(root: Path, policy: DataPolicy) -> None:
    (root / "d.npz").mkdir()
    refused("invalid_data", (root / "d.npz").as_uri(), policy)


def test_no_roots_means_no_file_references(root: Path) -> None:
    np.savez(root / "d.npz", x=np.ones((2, 1)), y=np.array([0, 1]))
    refused("data_ref_refused", (root / "d.npz").as_uri(), DataPolicy())


def test_relative_root_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="absolute"):
        DataPolicy(roots=(Path("data"),))


def test_file_reference_naming_another_host_is_refused(policy: DataPolicy) -> None:
    refused("invalid_data_ref", "file://fileserver/share/d.npz", policy)


def test_check_local_path_returns_the_real_path(root: Path, policy: DataPolicy) -> None:
    (root / "a.npz").write_bytes(b"")
    assert check_local_path(root / "a.npz", policy.roots) == Path(os.path.realpath(root / "a.npz"))


# --- pickles -------------------------------------------------------------------------------


def test_npz_with_an_object_array_is_refused_unexecuted(
    root: Path, policy: DataPolicy, marker: Path
) -> None:
    np.savez(root / "evil.npz", x=np.array([Payload(marker), 1], dtype=object), y=np.zeros(2))
    error = refused("pickled_data_refused", (root / "evil.npz").as_uri(), policy)
    assert "np.savez" in error.message
    assert not marker.exists()


def test_npy_token_stream_with_an_object_array_is_refused_unexecuted(
    root: Path, policy: DataPolicy, marker: Path
) -> None:
    np.save(root / "evil.npy", np.array([Payload(marker), 1], dtype=object), allow_pickle=True)
    refused("pickled_data_refused", (root / "evil.npy").as_uri(), policy)
    assert not marker.exists()


def test_raw_pickle_named_npz_is_refused_unexecuted(
    root: Path, policy: DataPolicy, marker: Path
) -> None:
    (root / "evil.npz").write_bytes(pickle.dumps({"x": Payload(marker)}))
    refused("invalid_data", (root / "evil.npz").as_uri(), policy)
    assert not marker.exists()


def test_pt_with_a_pickle_payload_is_refused_unexecuted(
    root: Path, policy: DataPolicy, marker: Path
) -> None:
    torch.save({"x": Payload(marker), "y": torch.zeros(2)}, root / "evil.pt")
    error = refused("pickled_data_refused", (root / "evil.pt").as_uri(), policy)
    assert "torch.save" in error.message
    assert not marker.exists()


def test_raw_pickle_named_pt_is_refused_unexecuted(
    root: Path, policy: DataPolicy, marker: Path
) -> None:
    (root / "evil.pt").write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=2))
    refused("pickled_data_refused", (root / "evil.pt").as_uri(), policy)
    assert not marker.exists()


# --- values --------------------------------------------------------------------------------


def test_nan_features_are_refused(root: Path, policy: DataPolicy) -> None:
    x = np.ones((4, 2))
    x[2, 1] = np.nan
    np.savez(root / "nan.npz", x=x, y=np.array([0, 1, 0, 1]))
    error = refused("non_finite_data", (root / "nan.npz").as_uri(), policy)
    assert "example 2" in error.message


def test_infinite_regression_targets_are_refused(root: Path, policy: DataPolicy) -> None:
    torch.save({"x": torch.ones(3, 1), "y": torch.tensor([1.0, float("inf"), 0.0])}, root / "i.pt")
    refused("non_finite_data", (root / "i.pt").as_uri(), policy)


def test_nan_text_in_csv_is_refused(root: Path, policy: DataPolicy) -> None:
    (root / "n.csv").write_text("a,target\nnan,0\n1,1\n")
    refused("non_finite_data", (root / "n.csv").as_uri(), policy)


def test_pt_with_meta_tensors_is_refused(root: Path, policy: DataPolicy) -> None:
    torch.save({"x": torch.zeros(3, 2, device="meta"), "y": torch.zeros(3)}, root / "m.pt")
    error = refused("invalid_data", (root / "m.pt").as_uri(), policy)
    assert "meta" in error.message


def test_pt_with_unsigned_labels_is_read(root: Path, policy: DataPolicy) -> None:
    y = torch.tensor([0, 2, 1], dtype=torch.uint16)
    torch.save({"x": torch.zeros(3, 2), "y": y}, root / "u.pt")
    assert open_dataset((root / "u.pt").as_uri(), policy).y.tolist() == [0, 2, 1]


def test_mismatched_x_and_y_are_refused(root: Path, policy: DataPolicy) -> None:
    np.savez(root / "m.npz", x=np.ones((5, 2)), y=np.array([0, 1, 0]))
    error = refused("invalid_data", (root / "m.npz").as_uri(), policy)
    assert "5 examples but y has 3" in error.message


def test_negative_labels_are_refused(root: Path, policy: DataPolicy) -> None:
    np.savez(root / "neg.npz", x=np.ones((3, 2)), y=np.array([0, -1, 1]))
    refused("invalid_data", (root / "neg.npz").as_uri(), policy)


def test_labels_beyond_the_declared_classes_are_refused(root: Path, policy: DataPolicy) -> None:
    np.savez(root / "c.npz", x=np.ones((3, 2)), y=np.array([0, 7, 1]))
    refused("invalid_data", (root / "c.npz").as_uri() + "?num_classes=3", policy)


@pytest.mark.parametrize(
    "x", [np.ones((2, 2), dtype=np.complex64), np.array([["a"], ["b"]]), np.ones((2, 1), "M8[s]")]
)
def test_non_numeric_arrays_are_refused(root: Path, policy: DataPolicy, x: np.ndarray) -> None:
    np.savez(root / "t.npz", x=x, y=np.array([0, 1]))
    refused("invalid_data", (root / "t.npz").as_uri(), policy)


def test_a_single_example_is_too_few(root: Path, policy: DataPolicy) -> None:
    np.savez(root / "one.npz", x=np.ones((1, 2)), y=np.array([0]))
    refused("too_few_examples", (root / "one.npz").as_uri(), policy)


def test_npz_without_y_is_refused(root: Path, policy: DataPolicy) -> None:
    np.savez(root / "x.npz", x=np.ones((2, 2)), labels=np.array([0, 1]))
    error = refused("invalid_data", (root / "x.npz").as_uri(), policy)
    assert "np.savez(path, x=features, y=targets)" in error.message


# --- sizes ---------------------------------------------------------------------------------


def test_oversized_file_is_refused_before_reading(root: Path) -> None:
    np.savez(root / "big.npz", x=np.ones((1000, 10)), y=np.zeros(1000, dtype=np.int64))
    small = DataPolicy(roots=(root,), max_bytes=10_000)
    error = refused("data_too_large", (root / "big.npz").as_uri(), small)
    assert "10000" in error.message


def test_compressed_npz_bomb_is_refused(root: Path) -> None:
    np.savez_compressed(root / "bomb.npz", x=np.zeros((4000, 100)), y=np.zeros(4000, np.int64))
    assert (root / "bomb.npz").stat().st_size < 50_000
    small = DataPolicy(roots=(root,), max_bytes=100_000)
    error = refused("data_too_large", (root / "bomb.npz").as_uri(), small)
    assert "unpacks" in error.message


def test_compressed_parquet_bomb_is_refused(root: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"f": np.zeros(200_000), "target": np.zeros(200_000, dtype=np.int64)})
    pq.write_table(table, root / "bomb.parquet", compression="zstd")
    size = (root / "bomb.parquet").stat().st_size
    small = DataPolicy(roots=(root,), max_bytes=size * 4)
    refused("data_too_large", (root / "bomb.parquet").as_uri(), small)


def test_oversized_image_is_refused_before_decoding(root: Path, policy: DataPolicy) -> None:
    image_module = pytest.importorskip("PIL.Image")
    (root / "imgs" / "a").mkdir(parents=True)
    image_module.new("L", (6000, 6000)).save(root / "imgs" / "a" / "huge.png")
    (root / "imgs" / "b").mkdir()
    image_module.new("L", (4, 4)).save(root / "imgs" / "b" / "ok.png")
    error = refused("data_too_large", (root / "imgs").as_uri(), policy)
    assert "huge.png" in error.message


# --- references ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "ftp://example.com/data.npz",
        "javascript:alert(1)",
        "data:application/octet-stream;base64,AAAA",
        "gopher://example.com/1",
        "/etc/passwd",
        "C:\\data\\train.npz",
        "jar:file:///x.jar!/d.npz",
    ],
)
def test_unknown_schemes_are_refused(ref: str, policy: DataPolicy) -> None:
    error = refused("unsupported_data_scheme", ref, policy)
    assert "builtin://" in error.message


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "builtin://digits\n",
        " builtin://digits",
        "file:///data/a\x00.npz",
        "builtin:digits",
        "file:/etc/passwd",
        "builtin://" + "a" * 5000,
    ],
)
def test_malformed_references_are_refused(ref: str, policy: DataPolicy) -> None:
    refused("invalid_data_ref", ref, policy)
