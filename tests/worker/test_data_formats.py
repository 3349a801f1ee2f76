"""File formats under a data root round-trip into validated datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lrprobe.worker.intake.data.policy import DataPolicy
from lrprobe.worker.intake.data.references import open_dataset
from lrprobe.worker.intake.errors import IntakeError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    return data


@pytest.fixture
def policy(root: Path) -> DataPolicy:
    return DataPolicy(roots=(root,), max_bytes=10_000_000)


def uri(path: Path, query: str = "") -> str:
    return path.as_uri() + (f"?{query}" if query else "")


def open_expecting(code: str, ref: str, policy: DataPolicy, **kwargs: int) -> IntakeError:
    with pytest.raises(IntakeError) as info:
        open_dataset(ref, policy, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code, info.value.message
    assert info.value.message.endswith(".")
    return info.value


# --- .npz and .pt --------------------------------------------------------------------------


def test_npz_classification_round_trips(root: Path, policy: DataPolicy) -> None:
    x = np.random.default_rng(0).normal(size=(20, 3, 4)).astype(np.float32)
    y = np.arange(20) % 4
    np.savez(root / "train.npz", x=x, y=y)

    data = open_dataset(uri(root / "train.npz"), policy)

    assert data.kind == "classification"
    assert data.name == "train.npz"
    assert data.feature_shape == (3, 4)
    assert data.num_classes == 4
    assert torch.equal(data.x, torch.from_numpy(x))
    assert data.y.dtype == torch.int64
    assert torch.equal(data.y, torch.from_numpy(y))


def test_npz_float_targets_are_regression(root: Path, policy: DataPolicy) -> None:
    np.savez(root / "r.npz", x=np.ones((5, 2)), y=np.linspace(0, 1, 10).reshape(5, 2))
    data = open_dataset(uri(root / "r.npz"), policy)
    assert data.kind == "regression"
    assert data.x.dtype == torch.float64  # floating precision is kept
    assert data.num_classes is None
    assert data.target_shape == (2,)


def test_npz_task_and_num_classes_options(root: Path, policy: DataPolicy) -> None:
    np.savez(root / "c.npz", x=np.ones((4, 2), np.float32), y=np.array([0.0, 1.0, 2.0, 1.0]))
    data = open_dataset(uri(root / "c.npz", "task=classification&num_classes=5"), policy)
    assert data.kind == "classification"
    assert data.num_classes == 5
    assert data.y.dtype == torch.int64
    regression = open_dataset(uri(root / "c.npz", "task=regression"), policy)
    assert regression.y.dtype == torch.float64


def test_npz_non_native_byte_order_and_unsigned_labels(root: Path, policy: DataPolicy) -> None:
    np.savez(root / "be.npz", x=np.ones((3, 2), dtype=">f4"), y=np.array([0, 1, 1], dtype=">u2"))
    data = open_dataset(uri(root / "be.npz"), policy)
    assert data.x.dtype == torch.float32
    assert data.y.tolist() == [0, 1, 1]


def test_pt_dict_of_tensors_round_trips(root: Path, policy: DataPolicy) -> None:
    x = torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.save({"x": x, "y": y, "meta": torch.tensor(1)}, root / "d.pt")

    data = open_dataset(uri(root / "d.pt"), policy)

    assert data.kind == "classification"
    assert torch.equal(data.x, x)
    assert torch.equal(data.y, y)


def test_pt_without_y_says_how_to_save(root: Path, policy: DataPolicy) -> None:
    torch.save({"x": torch.randn(3, 2)}, root / "d.pt")
    error = open_expecting("invalid_data", uri(root / "d.pt"), policy)
    assert "torch.save({'x'" in error.message


def test_pt_that_is_not_a_dict_is_refused(root: Path, policy: DataPolicy) -> None:
    torch.save([torch.randn(3, 2), torch.zeros(3)], root / "l.pt")
    open_expecting("invalid_data", uri(root / "l.pt"), policy)


def test_damaged_pt_is_invalid_data(root: Path, policy: DataPolicy) -> None:
    (root / "bad.pt").write_bytes(b"PK\x03\x04 definitely not a torch file")
    open_expecting("invalid_data", uri(root / "bad.pt"), policy)


# --- CSV -----------------------------------------------------------------------------------


def test_csv_with_default_target_column(root: Path, policy: DataPolicy) -> None:
    (root / "t.csv").write_text("a,target,b\n1,0,2\n3,1,4\n5,2,6.5\n")
    data = open_dataset(uri(root / "t.csv"), policy)
    assert data.kind == "classification"
    assert data.x.tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.5]]
    assert data.y.tolist() == [0, 1, 2]


def test_csv_last_column_is_the_target_by_default(root: Path, policy: DataPolicy) -> None:
    (root / "t.csv").write_text("a,b,price\n1,2,0.5\n3,4,1.25\n")
    data = open_dataset(uri(root / "t.csv"), policy)
    assert data.kind == "regression"
    assert data.y.tolist() == [0.5, 1.25]


def test_csv_named_target_and_text_labels(root: Path, policy: DataPolicy) -> None:
    (root / "t.csv").write_text(
        "\ufefflabel,f1,f2\r\ndog,1,2\r\ncat,3,4\r\n\r\nemu,5,6\r\ncat,7,8\r\n", encoding="utf-8"
    )
    data = open_dataset(uri(root / "t.csv", "target=label"), policy)
    assert data.class_names == ("cat", "dog", "emu")
    assert data.y.tolist() == [1, 0, 2, 0]
    assert data.x.shape == (4, 2)


def test_csv_integer_target_can_be_declared_regression(root: Path, policy: DataPolicy) -> None:
    (root / "t.csv").write_text("a,age\n1,30\n2,41\n")
    data = open_dataset(uri(root / "t.csv", "task=regression"), policy)
    assert data.kind == "regression"
    assert data.y.tolist() == [30.0, 41.0]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a,b,target\n1,2,0\n3,4\n", "line 3 has 2 fields"),
        ("a,b,target\n1,x,0\n3,4,1\n", "'x' in feature column 'b'"),
        ("a,b,target\n1,,0\n3,4,1\n", "empty value in feature column 'b'"),
        ('a,b,target\n1,"2,0\n', "not well-formed CSV"),
        ("a,a,target\n1,2,0\n", "distinct"),
        ("target\n1\n2\n", "at least one feature column"),
        ("", "empty"),
    ],
)
def test_malformed_csv_is_invalid_data(
    root: Path, policy: DataPolicy, text: str, fragment: str
) -> None:
    (root / "m.csv").write_text(text)
    error = open_expecting("invalid_data", uri(root / "m.csv"), policy)
    assert fragment in error.message


def test_csv_that_is_not_utf8_is_invalid_data(root: Path, policy: DataPolicy) -> None:
    (root / "m.csv").write_bytes(b"a,target\n\xff\xfe,1\n")
    open_expecting("invalid_data", uri(root / "m.csv"), policy)


def test_csv_with_unknown_target_column(root: Path, policy: DataPolicy) -> None:
    (root / "t.csv").write_text("a,b\n1,2\n3,4\n")
    error = open_expecting("invalid_data_ref", uri(root / "t.csv", "target=label"), policy)
    assert "a, b" in error.message


# --- Parquet -------------------------------------------------------------------------------


def test_parquet_round_trips_with_text_target(root: Path, policy: DataPolicy) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "f1": pa.array([1.0, 2.0, 3.0, 4.0]),
            "f2": pa.array([1, 0, 1, 0], type=pa.int8()),
            "flag": pa.array([True, False, True, True]),
            "species": pa.array(["b", "a", "b", "c"]),
        }
    )
    pq.write_table(table, root / "t.parquet")

    data = open_dataset(uri(root / "t.parquet", "target=species"), policy)

    assert data.kind == "classification"
    assert data.class_names == ("a", "b", "c")
    assert data.y.tolist() == [1, 0, 1, 2]
    assert data.x.tolist()[0] == [1.0, 1.0, 1.0]


def test_parquet_column_types_decide_the_task(root: Path, policy: DataPolicy) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"f": [1.0, 2.0], "target": [1.0, 2.0]}), root / "r.parquet")
    pq.write_table(pa.table({"f": [1.0, 2.0], "target": [1, 2]}), root / "c.parquet")
    assert open_dataset(uri(root / "r.parquet"), policy).kind == "regression"
    assert open_dataset(uri(root / "c.parquet"), policy).kind == "classification"


def test_parquet_with_missing_values_is_invalid(root: Path, policy: DataPolicy) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"f": [1.0, None], "target": [0, 1]}), root / "n.parquet")
    error = open_expecting("invalid_data", uri(root / "n.parquet"), policy)
    assert "missing values in column 'f'" in error.message


def test_parquet_with_text_feature_is_invalid(root: Path, policy: DataPolicy) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"f": ["x", "y"], "target": [0, 1]}), root / "s.parquet")
    open_expecting("invalid_data", uri(root / "s.parquet"), policy)


def test_parquet_without_pyarrow_names_the_extra(
    root: Path, policy: DataPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "t.parquet").write_bytes(b"PAR1 not really PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    error = open_expecting("format_backend_unavailable", uri(root / "t.parquet"), policy)
    assert "lrprobe[parquet]" in error.message


def test_garbage_parquet_is_invalid_data(root: Path, policy: DataPolicy) -> None:
    pytest.importorskip("pyarrow")
    (root / "g.parquet").write_bytes(b"PAR1 not really PAR1")
    open_expecting("invalid_data", uri(root / "g.parquet"), policy)


# --- token streams -------------------------------------------------------------------------


def test_npy_token_stream_is_cut_into_shifted_windows(root: Path, policy: DataPolicy) -> None:
    np.save(root / "tokens.npy", np.arange(23, dtype=np.int64))

    data = open_dataset(uri(root / "tokens.npy"), policy, block_size=5)

    assert data.kind == "tokens"
    assert data.num_examples == 4  # (23 - 1) // 5
    assert data.feature_shape == (5,)
    assert data.block_size == 5
    assert data.num_classes == 23
    assert data.x[1].tolist() == [5, 6, 7, 8, 9]
    assert data.y[1].tolist() == [6, 7, 8, 9, 10]


def test_bin_uint16_tokens_like_nanogpt(root: Path, policy: DataPolicy) -> None:
    stream = (np.arange(41) * 7 % 50_000).astype(np.uint16)
    stream.tofile(root / "train.bin")

    data = open_dataset(uri(root / "train.bin", "block_size=8&vocab_size=50304"), policy)

    assert data.num_examples == 5
    assert data.num_classes == 50304
    assert data.x.reshape(-1).tolist() == stream[:40].astype(int).tolist()
    assert data.y.reshape(-1).tolist() == stream[1:41].astype(int).tolist()


def test_bin_uint32_tokens(root: Path, policy: DataPolicy) -> None:
    np.arange(9, dtype="<u4").tofile(root / "t.bin")
    data = open_dataset(uri(root / "t.bin", "dtype=uint32&block_size=4"), policy)
    assert data.num_examples == 2


def test_token_stream_needs_a_block_size(root: Path, policy: DataPolicy) -> None:
    np.save(root / "t.npy", np.arange(10))
    error = open_expecting("block_size_required", uri(root / "t.npy"), policy)
    assert "block_size" in error.message


def test_conflicting_block_sizes_are_refused(root: Path, policy: DataPolicy) -> None:
    np.save(root / "t.npy", np.arange(10))
    open_expecting("invalid_data_ref", uri(root / "t.npy", "block_size=4"), policy, block_size=3)


def test_token_ids_beyond_the_vocabulary_are_refused(root: Path, policy: DataPolicy) -> None:
    np.save(root / "t.npy", np.array([1, 2, 3, 99, 4, 5, 6]))
    error = open_expecting(
        "invalid_data", uri(root / "t.npy", "vocab_size=50&block_size=2"), policy
    )
    assert "99" in error.message


@pytest.mark.parametrize(
    "array", [np.zeros((4, 4), dtype=np.int64), np.linspace(0, 1, 10), np.array(["a", "b"])]
)
def test_npy_that_is_not_a_1d_integer_stream_is_refused(
    root: Path, policy: DataPolicy, array: np.ndarray
) -> None:
    np.save(root / "t.npy", array)
    open_expecting("invalid_data", uri(root / "t.npy", "block_size=2"), policy)


def test_odd_length_bin_is_refused(root: Path, policy: DataPolicy) -> None:
    (root / "t.bin").write_bytes(b"\x01\x00\x02\x00\x03")
    open_expecting("invalid_data", uri(root / "t.bin", "block_size=1"), policy)


def test_too_few_tokens_for_the_block_size(root: Path, policy: DataPolicy) -> None:
    np.save(root / "t.npy", np.arange(10))
    open_expecting("too_few_examples", uri(root / "t.npy", "block_size=8"), policy)


# --- image folders -------------------------------------------------------------------------


def write_images(folder: Path, classes: dict[str, int], size: tuple[int, int] = (12, 10)) -> None:
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (folder / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            suffix = ".png" if i % 2 == 0 else ".jpg"
            image_module.fromarray(pixels).save(folder / name / f"{i}{suffix}")


def test_image_folder_decodes_to_fixed_size_float_tensors(root: Path, policy: DataPolicy) -> None:
    write_images(root / "imgs", {"dog": 3, "cat": 2})
    (root / "imgs" / "cat" / "notes.txt").write_text("ignored")
    (root / "imgs" / ".hidden").mkdir()

    data = open_dataset(uri(root / "imgs"), policy)

    assert data.kind == "classification"
    assert data.class_names == ("cat", "dog")
    assert data.x.shape == (5, 3, 32, 32)
    assert data.x.dtype == torch.float32
    assert float(data.x.min()) >= 0.0 and float(data.x.max()) <= 1.0
    assert data.y.tolist() == [0, 0, 1, 1, 1]


def test_image_folder_size_and_grey_mode(root: Path, policy: DataPolicy) -> None:
    write_images(root / "imgs", {"a": 1, "b": 1})
    data = open_dataset(uri(root / "imgs", "size=8x6&mode=gray"), policy)
    assert data.x.shape == (2, 1, 8, 6)


def test_corrupt_image_is_invalid_data(root: Path, policy: DataPolicy) -> None:
    write_images(root / "imgs", {"a": 1, "b": 1})
    (root / "imgs" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    error = open_expecting("invalid_data", uri(root / "imgs"), policy)
    assert "b/broken.png" in error.message


def test_image_folder_without_classes_is_invalid(root: Path, policy: DataPolicy) -> None:
    (root / "flat").mkdir()
    (root / "flat" / "x.png").write_bytes(b"")
    open_expecting("invalid_data", uri(root / "flat"), policy)


def test_image_folder_without_pillow_names_the_extra(
    root: Path, policy: DataPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "imgs" / "a").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "PIL", None)
    error = open_expecting("format_backend_unavailable", uri(root / "imgs"), policy)
    assert "lrprobe[images]" in error.message


def test_image_folder_decoded_size_is_capped(root: Path) -> None:
    write_images(root / "imgs", {"a": 2, "b": 2})
    small = DataPolicy(roots=(root,), max_bytes=4 * 3 * 32 * 32 * 4 - 1)
    open_expecting("data_too_large", uri(root / "imgs"), small)


# --- references and options ----------------------------------------------------------------


def test_unknown_extension_is_unsupported(root: Path, policy: DataPolicy) -> None:
    (root / "data.xlsx").write_bytes(b"x")
    error = open_expecting("unsupported_data_format", uri(root / "data.xlsx"), policy)
    assert ".npz" in error.message


def test_format_option_overrides_the_extension(root: Path, policy: DataPolicy) -> None:
    (root / "data.txt").write_text("a,target\n1,0\n2,1\n")
    assert open_dataset(uri(root / "data.txt", "format=csv"), policy).num_examples == 2


def test_unknown_option_is_refused_with_the_known_ones(root: Path, policy: DataPolicy) -> None:
    np.savez(root / "d.npz", x=np.ones((2, 1)), y=np.array([0, 1]))
    error = open_expecting("invalid_data_ref", uri(root / "d.npz", "targt=y"), policy)
    assert "num_classes" in error.message


def test_percent_encoded_paths_are_decoded(root: Path, policy: DataPolicy) -> None:
    np.savez(root / "my data.npz", x=np.ones((2, 1)), y=np.array([0, 1]))
    assert open_dataset(uri(root / "my data.npz"), policy).name == "my data.npz"


def test_missing_file_is_data_not_found(root: Path, policy: DataPolicy) -> None:
    open_expecting("data_not_found", uri(root / "nope.npz"), policy)
