"""Loading ``torch.export`` ``.pt2`` archives without running anything that came in the archive.

``torch.export.load`` documents that it "uses pickle under the hood"; reading its source (torch
2.13) and attacking it showed more than pickle. This module therefore does not hand the user's
file to torch at all: it validates every member and every JSON field against allow-lists, then
writes a *new* archive from what it validated and loads that. The checks were verified against
torch 2.13 only (``AUDITED_TORCH``); on any other torch the format is refused until re-audited.

What a benign ``torch.export.save`` archive holds (torch 2.13, under one root folder)::

    archive_format, archive_version, byteorder, .data/version, .data/serialization_id
    models/model.json                            graph, signature, shapes: JSON
    data/weights/model_weights_config.json       FQN -> path_name, use_pickle, tensor_meta
    data/weights/weight_<i>                      raw tensor bytes (not a pickle)
    data/constants/model_constants_config.json   the same for lifted tensor constants
    data/constants/tensor_<i>                    raw tensor bytes
    data/sample_inputs/model.pt                  torch.save() of the example inputs: a PICKLE

Why each check exists (the sink in torch 2.13 it closes):

1. Member allow-list. ``data/weights/model.pt`` and ``data/constants/model.pt`` (legacy) are
   pickles unpickled with a ``weights_only=False`` fallback; ``data/constants/custom_obj_*``
   go to ``torch._C._pickle_load_obj`` and ``opaque_obj_*`` to ``pickle.loads``;
   ``data/aotinductor/`` holds compiled shared libraries that are loaded into the process;
   ``extra/``, ``xl_model_weights/``, executorch and MTIA payloads are not needed. Anything but
   the members listed above is refused, including ``*.pkl``, ``data.pkl``, ``constants.pkl``.
2. ``use_pickle`` must be false for every weight and constant: a true flag makes torch call
   ``torch.load(..., weights_only=False)`` on that member.
3. Sample inputs are blanked: every benign archive carries them as a pickle, and torch unpickles
   them with a ``weights_only=False`` fallback. The probe brings its own data.
4. ``expr_str`` (symbolic shapes) goes to ``sympy.sympify``, which calls ``eval``: a JSON-only
   archive with ``"expr_str": "__import__('os').system(...)"`` runs that command during
   ``torch.export.load`` (demonstrated). Expressions must match a small grammar: ``Symbol``,
   ``Integer`` and the arithmetic/comparison functions torch writes, no attribute access, no
   strings but symbol names, no powers or shifts (they can be made to allocate without bound).
5. ``guards_code`` is a list of Python source lines that ``ExportedProgram.module()`` passes to
   ``exec``, and the result runs on the first forward (demonstrated). It is dropped, and the
   module is unlifted with ``check_guards=False`` so no guard function is generated either.
6. Names are written verbatim into the Python source that ``torch.fx`` generates and ``exec``s
   for ``forward``: node names must be plain identifiers, parameter/buffer FQNs dotted
   identifiers, and no part may be a dunder.
7. Node targets are resolved by ``getattr`` along ``torch.``/``math.``/``_operator.`` paths and
   called on every forward: only ``torch.ops.aten`` overloads are allowed whose schema has no
   free-form string argument (this rules out ``aten::save`` and ``aten::from_file``, which write
   and read files), plus the symbolic-int operators torch emits. Higher-order ops (subgraphs),
   custom objects, effect tokens and extension operators are refused.
8. Pytree specs (``in_spec``/``out_spec``) may name a ``defaultdict`` factory or an enum, which
   ``treespec_loads`` imports with ``importlib.import_module``: only tuple, list, dict,
   OrderedDict and leaves are allowed, and contexts must be lists of plain keys.
9. Node metadata (``stack_trace``, ``nn_module_stack``, ``source_fn_stack``, ``torch_fn``,
   ``custom``) is resolved by ``getattr`` on ``torch`` and parsed further: it is dropped.
10. Every other string in the JSON must be a plain token (letters, digits, ``_``, ``.``).
11. The archive is rebuilt from what Python's ``zipfile`` read, so torch's own zip reader sees
    exactly the validated bytes (duplicate or overlapping members cannot disagree between the
    two readers). Raw weight members are not sniffed for pickle opcodes: they are arbitrary
    tensor bytes (``0x80 0x02`` is an ordinary float pattern) and check 2 makes torch read them
    as raw storage only.

Residual risk, and why the format is off unless the operator enables it: the deserializer is a
large, fast-moving part of torch, and these checks cover the sinks found by reading it, not a
proof that there are no others; the graph of allowed aten ops still runs on the worker (it can
allocate large tensors: worker memory and time limits apply).

Train-mode BatchNorm: archives exported in train mode (training IR, in-place running-stat
updates) and after ``run_decompositions()`` (functional BatchNorm whose new running stats are
copied back into the buffers) both load. For the functional form torch's unlifted module copies
into a buffer that autograd saved for backward; the buffer is cloned before use so that
``backward()`` works. The exported module's train/eval mode is fixed at export time: its
``train()``/``eval()`` raise ``NotImplementedError``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import fx, nn

from lrprobe.rules.archives import list_zip_members
from lrprobe.worker.intake.errors import IntakeError

AUDITED_TORCH = "2.13"
"""The torch minor version whose ``torch.export.load`` these checks were verified against."""

_SEND_INSTEAD = (
    "send the weights as safetensors with a built-in architecture, or ask the operator to "
    "register your architecture"
)

_FIXED_MEMBERS = {
    "archive_format": re.compile(rb"pt2"),
    "archive_version": re.compile(rb"\d{1,4}"),
    "byteorder": re.compile(rb"little"),
    ".data/version": re.compile(rb"\d{1,4}\n?"),
    ".data/serialization_id": re.compile(rb"\d{1,64}"),
}
_MODEL_JSON = "models/model.json"
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
_SAMPLE_INPUTS = "data/sample_inputs/model.pt"
_WEIGHT_MEMBER = re.compile(r"data/weights/(weight_\d{1,9})")
_CONSTANT_MEMBER = re.compile(r"data/constants/(tensor_\d{1,9})")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_FQN_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}|\d{1,9}")
_STRING_ARG = re.compile(r"[A-Za-z0-9_ ,.\->]{0,128}")
_VERSION = re.compile(r"[A-Za-z0-9_.+\-]{0,64}")

# aten string arguments that are enum-like choices, not paths, code or free text.
_ENUM_STRING_ARGS = frozenset(
    {
        "approximate",
        "rounding_mode",
        "reduce",
        "padding",
        "mode",
        "equation",
        "indexing",
        "norm",
        "ord",
        "UPLO",
        "driver",
        "side",
        "interpolation",
        "pad_mode",
        "padding_side",
    }
)
_SYM_TARGETS = frozenset(
    {
        "_operator.add",
        "_operator.sub",
        "_operator.mul",
        "_operator.floordiv",
        "_operator.truediv",
        "_operator.mod",
        "_operator.neg",
        "_operator.pos",
        "_operator.eq",
        "_operator.ne",
        "_operator.lt",
        "_operator.le",
        "_operator.gt",
        "_operator.ge",
        "_operator.and_",
        "_operator.or_",
        "_operator.getitem",
        "math.trunc",
        "torch.sym_not",
        "torch.sym_int",
        "torch.sym_float",
        "torch.sym_ite",
        "torch.sym_max",
        "torch.sym_min",
        "torch.sym_sqrt",
    }
)
_ATEN_TARGET = re.compile(r"torch\.ops\.aten\.([A-Za-z0-9_]{1,128})\.([A-Za-z0-9_]{1,128})")

# Keys whose presence means a feature we refuse (subgraphs, custom objects, effect tokens).
_REFUSED_KEYS = frozenset(
    {"as_graph", "as_custom_obj", "custom_obj", "token", "as_operator", "as_sym_float_graph"}
)
# Keys whose string values are names that torch.fx writes into generated source.
_NAME_KEYS = frozenset({"name", "as_name", "forward_arg_names"})

_SYMBOL_CALL = re.compile(
    r"Symbol\('([A-Za-z_][A-Za-z0-9_]{0,30})'((?:,\s*[a-z_]{1,20}=(?:True|False)){0,8})\)"
)
_SYMBOL_ASSUMPTIONS = frozenset(
    {"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero"}
)
_FLOAT_CALL = re.compile(
    r"Float\('[-+]?[0-9]{1,30}(?:\.[0-9]{0,30})?(?:[eE][-+]?[0-9]{1,3})?'"
    r"(?:,\s*precision=\d{1,3})?\)"
)
_EXPR_TOKEN = re.compile(r"\s+|[A-Za-z_][A-Za-z0-9_]*|\d+|//|[-+*/%(),]|[<>=!]=|[<>]|.")
_EXPR_NAMES = frozenset(
    {
        "Integer",
        "Rational",
        "Add",
        "Mul",
        "Max",
        "Min",
        "Mod",
        "Abs",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "StrictLessThan",
        "LessThan",
        "StrictGreaterThan",
        "GreaterThan",
        "Equality",
        "Unequality",
        "And",
        "Or",
        "Not",
        "true",
        "false",
        "True",
        "False",
        "oo",
        "zoo",
        "nan",
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "FloatTrueDiv",
        "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
    }
)
_BARE_SYMBOL = re.compile(r"[a-z]{1,8}\d{1,9}")
_MAX_EXPR_CHARS = 4096
_TREESPEC_TYPES = frozenset(
    {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"}
)


def _refuse(reason: str) -> IntakeError:
    return IntakeError(
        "pt2_refused", f"The .pt2 archive was refused because {reason}; {_SEND_INSTEAD}."
    )


def pt2_available() -> bool:
    """Whether the running torch is the one the checks were audited against."""
    return torch.__version__.split("+")[0].rsplit(".", 1)[0] == AUDITED_TORCH


# --- JSON checks -------------------------------------------------------------------------


def _check_identifier(value: object, where: str) -> None:
    if (
        not isinstance(value, str)
        or not _IDENTIFIER.fullmatch(value)
        or (value.startswith("__") and value.endswith("__"))
    ):
        raise _refuse(f"{where} holds the name {value!r}, which is not a plain identifier")


def _check_fqn(value: object, where: str) -> None:
    if not isinstance(value, str):
        raise _refuse(f"{where} holds a non-string name")
    if value == "":
        return
    for part in value.split("."):
        if not _FQN_PART.fullmatch(part) or (part.startswith("__") and part.endswith("__")):
            raise _refuse(f"{where} holds the name {value!r}, which is not a dotted identifier")


def _check_expr(expr: object) -> None:
    if not isinstance(expr, str) or len(expr) > _MAX_EXPR_CHARS:
        raise _refuse("a symbolic shape expression is not a short string")
    rest = _FLOAT_CALL.sub(" F ", expr)
    for match in _SYMBOL_CALL.finditer(rest):
        for assumption in re.findall(r"([a-z_]+)=", match.group(2)):
            if assumption not in _SYMBOL_ASSUMPTIONS:
                raise _refuse(f"the shape expression {expr[:80]!r} has an unknown assumption")
    rest = _SYMBOL_CALL.sub(" S ", rest)
    for token in _EXPR_TOKEN.findall(rest):
        if token.isspace() or token in {"S", "F", "+", "-", "*", "/", "//", "%", "(", ")", ","}:
            continue
        if token in {"<", ">", "<=", ">=", "==", "!="}:
            continue
        if token.isdigit() and len(token) <= 20:
            continue
        if token in _EXPR_NAMES or _BARE_SYMBOL.fullmatch(token):
            continue
        raise _refuse(f"the shape expression {expr[:80]!r} contains {token[:40]!r}")


def _check_target(target: object) -> None:
    if not isinstance(target, str):
        raise _refuse("a graph node has a non-string target")
    if target in _SYM_TARGETS:
        return
    match = _ATEN_TARGET.fullmatch(target)
    if match is None:
        raise _refuse(f"the graph calls {target[:80]!r}, which is not an aten operator")
    packet_name, overload_name = match.groups()
    try:
        packet = getattr(torch.ops.aten, packet_name)
        overload = getattr(packet, overload_name)
    except (AttributeError, RuntimeError):
        raise _refuse(f"the graph calls {target!r}, which this torch does not have") from None
    if not isinstance(overload, torch._ops.OpOverload):
        raise _refuse(f"the graph calls {target!r}, which is not an operator overload")
    for argument in overload._schema.arguments:
        if "str" in str(argument.type) and argument.name not in _ENUM_STRING_ARGS:
            raise _refuse(
                f"the graph calls {target!r}, whose string argument {argument.name!r} can name "
                "files or carry code"
            )


def _check_treespec(value: object) -> None:
    if not isinstance(value, str):
        raise _refuse("a pytree spec is not a string")
    try:
        protocol_and_spec = json.loads(value)
    except ValueError:
        raise _refuse("a pytree spec is not JSON") from None
    if not (isinstance(protocol_and_spec, list) and len(protocol_and_spec) == 2):
        raise _refuse("a pytree spec is not [protocol, spec]")
    _check_treespec_node(protocol_and_spec[1], depth=0)


def _check_treespec_node(node: object, depth: int) -> None:
    if depth > 64 or not isinstance(node, dict):
        raise _refuse("a pytree spec is malformed or too deep")
    if set(node) != {"type", "context", "children_spec"}:
        raise _refuse("a pytree spec has unexpected fields")
    if node["type"] not in _TREESPEC_TYPES:
        raise _refuse(f"a pytree spec names the type {str(node['type'])[:80]!r}")
    context = node["context"]
    if context is not None:
        if not isinstance(context, str):
            raise _refuse("a pytree spec context is not a string")
        try:
            parsed = json.loads(context)
        except ValueError:
            raise _refuse("a pytree spec context is not JSON") from None
        if parsed is not None and not (
            isinstance(parsed, list)
            and all(
                (isinstance(k, str) and _IDENTIFIER.fullmatch(k)) or type(k) is int for k in parsed
            )
        ):
            raise _refuse("a pytree spec context is not a list of plain keys")
    children = node["children_spec"]
    if not isinstance(children, list):
        raise _refuse("a pytree spec has malformed children")
    for child in children:
        _check_treespec_node(child, depth + 1)


def _check_string(value: str, key: str) -> None:
    if key in _NAME_KEYS:
        _check_identifier(value, f"the field {key!r}")
    elif key in {"as_string", "as_strings"}:
        if not _STRING_ARG.fullmatch(value):
            raise _refuse(f"the string argument {value[:40]!r} has unexpected characters")
    elif key == "torch_version":
        if not _VERSION.fullmatch(value):
            raise _refuse("the torch version field has unexpected characters")
    else:
        _check_fqn(value, f"the field {key!r}")


def _sanitize(node: Any, key: str, depth: int = 0) -> Any:
    """Check ``node`` (found under ``key``) and return it with dropped fields removed."""
    if depth > 200:
        raise _refuse("the model JSON is nested too deeply")
    if isinstance(node, dict):
        clean: dict[str, Any] = {}
        for child_key, child in node.items():
            if child_key in _REFUSED_KEYS and child is not None:
                raise _refuse(f"the model uses {child_key!r} (subgraphs or custom objects)")
            if child_key == "metadata":
                clean[child_key] = {}
            elif child_key == "guards_code":
                clean[child_key] = []
            elif child_key in {"custom_obj_values", "treespec_namedtuple_fields"}:
                if child:
                    raise _refuse(f"the model uses {child_key!r} (custom classes)")
                clean[child_key] = child
            elif child_key == "expr_str":
                _check_expr(child)
                clean[child_key] = child
            elif child_key == "target":
                _check_target(child)
                clean[child_key] = child
            elif child_key in {"in_spec", "out_spec"}:
                _check_treespec(child)
                clean[child_key] = child
            else:
                if key.endswith("_values") or key in {"range_constraints"}:
                    _check_identifier(child_key, f"the table {key!r}")
                else:
                    _check_fqn(child_key, "a JSON key")
                clean[child_key] = _sanitize(child, child_key, depth + 1)
        return clean
    if isinstance(node, list):
        return [_sanitize(item, key, depth + 1) for item in node]
    if isinstance(node, str):
        _check_string(node, key)
        return node
    if node is None or isinstance(node, bool | int | float):
        return node
    raise _refuse("the model JSON holds an unexpected value")  # pragma: no cover


def _sanitize_payload_config(
    raw: bytes, member: re.Pattern[str], names: set[str], what: str
) -> bytes:
    config = _parse_json(raw, what)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict) or set(config) != {"config"}:
        raise _refuse(f"the {what} is not a JSON object with a 'config' table")
    for fqn, entry in entries.items():
        _check_fqn(fqn, f"the {what}")
        if not isinstance(entry, dict):
            raise _refuse(f"the {what} entry for {fqn!r} is not an object")
        if entry.get("use_pickle") is not False:
            raise _refuse(f"the {what} marks {fqn!r} as pickled (use_pickle)")
        path_name = entry.get("path_name")
        if not isinstance(path_name, str) or path_name not in names:
            raise _refuse(
                f"the {what} entry for {fqn!r} points at {str(path_name)[:60]!r}, which is not a "
                f"raw tensor member of the archive ({member.pattern})"
            )
        if not isinstance(entry.get("tensor_meta"), dict):
            raise _refuse(f"the {what} entry for {fqn!r} is not a tensor")
    return json.dumps(_sanitize(config, "payload_config")).encode()


def _parse_json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _refuse(f"the {what} is not JSON (it may be a pickle)") from None


# --- archive -----------------------------------------------------------------------------


def _sanitized_archive(path: Path, max_bytes: int) -> bytes:
    """Validate the archive at ``path`` and return the bytes of a rebuilt, checked archive."""
    archive_size = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        members = list_zip_members(zf, archive_size, max_bytes)
        roots = {m.path.parts[0] for m in members}
        if len(roots) != 1 or any(len(m.path.parts) < 2 for m in members):
            raise _refuse("its members are not all inside one top-level folder")
        (root,) = roots
        contents: dict[str, bytes] = {}
        for m in members:
            rel = str(PurePosixPath(*m.path.parts[1:]))
            allowed = (
                rel in _FIXED_MEMBERS
                or rel in {_MODEL_JSON, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG, _SAMPLE_INPUTS}
                or _WEIGHT_MEMBER.fullmatch(rel)
                or _CONSTANT_MEMBER.fullmatch(rel)
            )
            if not allowed:
                raise _refuse(
                    f"it holds the member {rel[:80]!r}, which is not part of a plain exported "
                    "program (pickles, custom objects, compiled code and extra files are refused)"
                )
            contents[rel] = b"" if rel == _SAMPLE_INPUTS else zf.read(m.raw_name)

    for rel, pattern in _FIXED_MEMBERS.items():
        if rel not in contents or not pattern.fullmatch(contents[rel]):
            raise _refuse(f"its member {rel!r} is missing or has unexpected content")
    for rel in (_MODEL_JSON, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG):
        if rel not in contents:
            raise _refuse(f"it has no {rel!r}")

    weight_names = {w.group(1) for r in contents if (w := _WEIGHT_MEMBER.fullmatch(r))}
    constant_names = {c.group(1) for r in contents if (c := _CONSTANT_MEMBER.fullmatch(r))}
    contents[_WEIGHTS_CONFIG] = _sanitize_payload_config(
        contents[_WEIGHTS_CONFIG], _WEIGHT_MEMBER, weight_names, "weights config"
    )
    contents[_CONSTANTS_CONFIG] = _sanitize_payload_config(
        contents[_CONSTANTS_CONFIG], _CONSTANT_MEMBER, constant_names, "constants config"
    )
    model = _parse_json(contents[_MODEL_JSON], "model JSON")
    if not isinstance(model, dict) or not isinstance(model.get("graph_module"), dict):
        raise _refuse("the model JSON has no graph module")
    contents[_MODEL_JSON] = json.dumps(_sanitize(model, "model")).encode()
    contents.setdefault(_SAMPLE_INPUTS, b"")

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as rebuilt:
        for rel, data in contents.items():
            rebuilt.writestr(f"{root}/{rel}", data)
    return out.getvalue()


def _clone_mutated_buffers(module: fx.GraphModule) -> None:
    """Let ``backward`` work when a functional graph copies new running stats into a buffer.

    The unlifted graph feeds buffer ``b`` to an op whose autograd node saves it, then runs
    ``b.copy_(new)``; the version bump makes ``backward`` fail. Reading a clone of ``b`` keeps
    the forward values and leaves the saved tensor untouched.
    """
    graph = module.graph
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.copy_.default:
            continue
        dest = node.args[0]
        if not isinstance(dest, fx.Node) or dest.op != "get_attr":
            continue
        readers = [user for user in dest.users if user is not node]
        if not readers:
            continue
        with graph.inserting_after(dest):
            clone = graph.call_function(torch.ops.aten.clone.default, (dest,))
        for reader in readers:
            reader.replace_input_with(dest, clone)
        changed = True
    if changed:
        graph.lint()
        module.recompile()


def load_pt2(path: Path, max_bytes: int) -> nn.Module:
    """Load an exported program from ``path`` after the checks in this module's docstring.

    Raises:
        IntakeError: ``pt2_disabled`` on an unaudited torch, ``pt2_refused`` when a check
            fails, ``unsupported_checkpoint`` when torch cannot load the checked archive.
    """
    if not pt2_available():
        raise IntakeError(
            "pt2_disabled",
            f"This worker runs torch {torch.__version__}, whose .pt2 loader has not been "
            f"audited (only {AUDITED_TORCH}); {_SEND_INSTEAD}.",
        )
    data = _sanitized_archive(path, max_bytes)
    try:
        program = torch.export.load(io.BytesIO(data))
        module = program.module(check_guards=False)
    except Exception as exc:
        raise IntakeError(
            "unsupported_checkpoint",
            f"torch could not load the exported program ({type(exc).__name__}: "
            f"{str(exc)[:200]}); re-export it with torch.export.save on torch {AUDITED_TORCH}, "
            f"or {_SEND_INSTEAD}.",
        ) from None
    if not isinstance(module, fx.GraphModule):  # pragma: no cover - torch contract
        raise _refuse("torch returned an unexpected module type")
    _clone_mutated_buffers(module)
    return module
