"""torch.export .pt2 intake: benign exports load; archives built to run code are refused.

Each hostile archive is a benign ``torch.export.save`` output with one thing changed, and each
targets a sink found in torch 2.13's loader (see worker/intake/checkpoints/pt2.py). Where the
payload would run, it would create a marker file; every test checks the marker is absent.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lrprobe.worker.intake.checkpoints.loading import load_checkpoint
from lrprobe.worker.intake.checkpoints.pt2 import pt2_available
from lrprobe.worker.intake.errors import IntakeError

pytestmark = pytest.mark.skipif(not pt2_available(), reason="pt2 intake audited for torch 2.13")


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class _Marker:
    """Unpickling this runs ``touch <path>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def _export(path: Path, *, decompose: bool = False, dynamic: bool = False) -> Path:
    torch.manual_seed(0)
    model = _ConvBN().train()
    dynamic_shapes = ({0: torch.export.Dim("batch", min=2, max=64)},) if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation notices while tracing
        program = torch.export.export(
            model, (torch.randn(4, 1, 6, 6),), dynamic_shapes=dynamic_shapes
        )
        if decompose:
            program = program.run_decompositions()
        torch.export.save(program, path)
    return path


@pytest.fixture(scope="module")
def benign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("pt2") / "benign.pt2", dynamic=True)


def _mutate(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None]) -> Path:
    """Copy the archive ``src`` to ``dst`` after ``edit`` changed its {relative name: bytes}."""
    with zipfile.ZipFile(src) as zf:
        root = zf.namelist()[0].split("/")[0]
        members = {name.split("/", 1)[1]: zf.read(name) for name in zf.namelist()}
    edit(members)
    with zipfile.ZipFile(dst, "w") as zf:
        for rel, data in members.items():
            zf.writestr(f"{root}/{rel}", data)
    return dst


def _edit_model(edit: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, bytes]], None]:
    def apply(members: dict[str, bytes]) -> None:
        model = json.loads(members["models/model.json"])
        edit(model)
        members["models/model.json"] = json.dumps(model).encode()

    return apply


def _nodes(model: dict[str, Any]) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = model["graph_module"]["graph"]["nodes"]
    return nodes


def _load(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return load_checkpoint(path, allow_pt2=True)


@pytest.mark.parametrize("decompose", [False, True], ids=["training-ir", "decomposed"])
def test_train_mode_batchnorm_export_loads_and_trains(tmp_path: Path, decompose: bool) -> None:
    path = _export(tmp_path / "bn.pt2", decompose=decompose)

    loaded = _load(path)
    out = loaded.model(torch.randn(4, 1, 6, 6))
    out.sum().backward()

    assert loaded.format == "pt2" and loaded.arch is None
    assert loaded.param_names == [
        "conv.weight",
        "conv.bias",
        "bn.weight",
        "bn.bias",
        "fc.weight",
        "fc.bias",
    ]
    assert [g.name for g in loaded.partition] == ["conv", "bn", "fc"]
    assert loaded.num_params == 4 * 9 + 4 + 4 + 4 + 12 + 3
    assert all(p.grad is not None for p in loaded.model.parameters())
    assert int(loaded.model.get_buffer("bn.num_batches_tracked")) == 1


def test_export_matches_the_eager_model(tmp_path: Path) -> None:
    path = _export(tmp_path / "bn.pt2")
    torch.manual_seed(0)
    eager = _ConvBN().train()
    x = torch.randn(4, 1, 6, 6)

    loaded = _load(path)

    torch.testing.assert_close(loaded.model(x), eager(x))


def test_dynamic_batch_export_accepts_other_batch_sizes(benign: Path) -> None:
    loaded = _load(benign)

    assert loaded.model(torch.randn(7, 1, 6, 6)).shape == (7, 3)


def test_pt2_is_refused_unless_enabled(benign: Path) -> None:
    with pytest.raises(IntakeError) as info:
        load_checkpoint(benign)

    assert info.value.code == "pt2_disabled"


def test_benign_load_never_unpickles(benign: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used while loading a .pt2")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(torch._C, "_pickle_load_obj", no_unpickling)

    assert _load(benign).format == "pt2"


def _sympify_payload(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(model: dict[str, Any]) -> None:
        values = model["graph_module"]["graph"]["tensor_values"]
        first = next(iter(values.values()))
        first["sizes"][0] = {
            "as_expr": {
                "expr_str": f"__import__('os').system('touch {marker}') + 4",
                "hint": {"as_int": 4},
            }
        }

    return _edit_model(edit)


def _pickled_weight(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(members: dict[str, bytes]) -> None:
        config = json.loads(members["data/weights/model_weights_config.json"])
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        members[f"data/weights/{entry['path_name']}"] = pickle.dumps(_Marker(marker))
        members["data/weights/model_weights_config.json"] = json.dumps(config).encode()

    return edit


def _extra_member(name: str, marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(members: dict[str, bytes]) -> None:
        members[name] = pickle.dumps(_Marker(marker))

    return edit


def _sample_inputs(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(members: dict[str, bytes]) -> None:
        members["data/sample_inputs/model.pt"] = pickle.dumps(_Marker(marker))

    return edit


def _model_json_as_pickle(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(members: dict[str, bytes]) -> None:
        members["models/model.json"] = pickle.dumps(_Marker(marker))

    return edit


def _defaultdict_treespec(marker: Path) -> Callable[[dict[str, bytes]], None]:
    spec = {
        "type": "collections.defaultdict",
        "context": json.dumps(
            {"default_factory_module": "os", "default_factory_name": "getcwd", "dict_context": []}
        ),
        "children_spec": [],
    }

    def edit(model: dict[str, Any]) -> None:
        model["graph_module"]["module_call_graph"][0]["signature"]["out_spec"] = json.dumps(
            [1, spec]
        )

    return _edit_model(edit)


def _target(target: str) -> Callable[[Path], Callable[[dict[str, bytes]], None]]:
    def make(marker: Path) -> Callable[[dict[str, bytes]], None]:
        def edit(model: dict[str, Any]) -> None:
            _nodes(model)[0]["target"] = target

        return _edit_model(edit)

    return make


def _node_name(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(model: dict[str, Any]) -> None:
        node = _nodes(model)[0]
        node["outputs"][0]["as_tensor"]["name"] = f"x; import os; os.system('touch {marker}')"

    return _edit_model(edit)


def _fqn(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(model: dict[str, Any]) -> None:
        spec = model["graph_module"]["signature"]["input_specs"][0]["parameter"]
        spec["parameter_name"] = "conv.__class__"

    return _edit_model(edit)


def _custom_obj(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(members: dict[str, bytes]) -> None:
        members["data/constants/custom_obj_0"] = pickle.dumps(_Marker(marker))
        config = {
            "config": {
                "obj": {
                    "path_name": "custom_obj_0",
                    "is_param": False,
                    "use_pickle": True,
                    "tensor_meta": None,
                }
            }
        }
        members["data/constants/model_constants_config.json"] = json.dumps(config).encode()

    return edit


HOSTILE: dict[str, Callable[[Path], Callable[[dict[str, bytes]], None]]] = {
    "sympify-eval-in-expr_str": _sympify_payload,
    "use_pickle-weight": _pickled_weight,
    "injected-pkl-member": lambda m: _extra_member("data/weights/evil.pkl", m),
    "injected-data.pkl": lambda m: _extra_member("data.pkl", m),
    "legacy-pickled-weights": lambda m: _extra_member("data/weights/model.pt", m),
    "aotinductor-library": lambda m: _extra_member("data/aotinductor/model/model.so", m),
    "extra-file": lambda m: _extra_member("extra/notes.txt", m),
    "custom-object-constant": _custom_obj,
    "model-json-is-a-pickle": _model_json_as_pickle,
    "defaultdict-treespec-import": _defaultdict_treespec,
    "aten-from_file-reads-files": _target("torch.ops.aten.from_file.default"),
    "aten-save-writes-files": _target("torch.ops.aten.save.default"),
    "getattr-path-to-os-system": _target("torch.os.system"),
    "higher-order-op": _target("torch.ops.higher_order.cond"),
    "codegen-injection-in-node-name": _node_name,
    "dunder-in-parameter-fqn": _fqn,
}


@pytest.mark.parametrize("build", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_pt2_is_refused_without_running_it(
    benign: Path, tmp_path: Path, build: Callable[[Path], Callable[[dict[str, bytes]], None]]
) -> None:
    marker = tmp_path / "PWNED"
    path = _mutate(benign, tmp_path / "hostile.pt2", build(marker))

    with pytest.raises(IntakeError) as info:
        _load(path)

    assert info.value.code == "pt2_refused", info.value
    assert not marker.exists()


def test_sample_inputs_pickle_is_never_opened(benign: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = _mutate(benign, tmp_path / "inputs.pt2", _sample_inputs(marker))

    loaded = _load(path)
    loaded.model(torch.randn(3, 1, 6, 6))

    assert not marker.exists()


def test_guards_code_is_never_executed(benign: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"

    def edit(model: dict[str, Any]) -> None:
        model["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]

    path = _mutate(benign, tmp_path / "guards.pt2", _edit_model(edit))

    loaded = _load(path)
    loaded.model(torch.randn(3, 1, 6, 6))

    assert not marker.exists()


def test_duplicate_member_is_refused(benign: Path, tmp_path: Path) -> None:
    path = tmp_path / "dup.pt2"
    with zipfile.ZipFile(benign) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
            dst.writestr(src.namelist()[0], b"other")

    with pytest.raises(IntakeError) as info:
        _load(path)

    assert info.value.code == "unsafe_archive"


def test_plain_torch_loader_would_run_the_sympify_payload(benign: Path, tmp_path: Path) -> None:
    # Why the checks exist: torch.export.load itself evaluates expr_str (no pickle involved).
    marker = tmp_path / "PWNED"
    path = _mutate(benign, tmp_path / "hostile.pt2", _sympify_payload(marker))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.load(path)

    assert marker.exists()
