"""Tiny float64 models, losses, batches and brute-force derivative references for
`lrprobe.worker.newton`.

The reference works on the restricted loss of docs/method.md §1.1,

    f(η) = L(θ − Σ_s η_s u_[s]),

built with `torch.func.functional_call` on detached copies of the parameters and buffers (so the
model under test is never touched, BatchNorm running stats included), and differentiates it with
plain nested `torch.autograd.grad` in float64. Vmapped `torch.func` transforms (jacrev, jacfwd,
hessian) are deliberately not used: in torch 2.13 their batching rule for layer_norm's backward
gives wrong mixed derivatives (pytorch/functorch#534).

Sign conventions follow docs/method.md §1.2: g_s = −∂f/∂η_s(0), H_st = ∂²f/∂η_s∂η_t(0),
D_stv = −∂³f/∂η_s∂η_t∂η_v(0).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional

DTYPE = torch.float64
Batch = tuple[Tensor, Tensor]
LossFn = Callable[[nn.Module, Batch], Tensor]
GroupNames = Sequence[Sequence[str]]


# --------------------------------------------------------------------------------------------
# Models (all output logits of shape (B, N_OUT))

N_OUT = 3


class TanhMLP(nn.Sequential):
    def __init__(self, sizes: Sequence[int] = (7, 6, 5, N_OUT)) -> None:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            if i:
                layers.append(nn.Tanh())
            layers.append(nn.Linear(a, b))
        super().__init__(*layers)


class ReluMLP(nn.Sequential):
    def __init__(self, sizes: Sequence[int] = (7, 6, 5, N_OUT)) -> None:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(a, b))
        super().__init__(*layers)


class BatchNormCNN(nn.Module):
    """conv → BatchNorm2d (train mode: the loss depends on batch statistics) → tanh → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, kernel_size=3)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 3 * 3, N_OUT)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.bn(self.conv(x)))
        return self.head(h.flatten(1))


class InstanceNormCNN(nn.Module):
    """conv → InstanceNorm2d (affine; per-sample statistics) → tanh → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, kernel_size=3)
        self.norm = nn.InstanceNorm2d(3, affine=True)
        self.head = nn.Linear(3 * 3 * 3, N_OUT)
        with torch.no_grad():
            self.norm.weight.add_(0.3 * torch.randn_like(self.norm.weight))
            self.norm.bias.add_(0.3 * torch.randn_like(self.norm.bias))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.norm(self.conv(x)))
        return self.head(h.flatten(1))


class TransformerBlock(nn.Module):
    """Pre-LN block: x + MHA(LN(x)), x + MLP(LN(x)), mean over tokens, linear head.

    `pos` is owned by the root module itself (a layer-rule edge case).
    """

    def __init__(self, tokens: int = 4, width: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.pos = nn.Parameter(0.1 * torch.randn(tokens, width))
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.head = nn.Linear(width, N_OUT)
        with torch.no_grad():  # non-trivial LayerNorm affine parameters
            for ln in (self.ln1, self.ln2):
                ln.weight.add_(0.3 * torch.randn_like(ln.weight))
                ln.bias.add_(0.3 * torch.randn_like(ln.bias))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos
        h = self.ln1(x)
        # need_weights=True keeps the explicit softmax path (differentiable three times).
        a, _ = self.attn(h, h, h, need_weights=True)
        x = x + a
        x = x + self.fc2(torch.tanh(self.fc1(self.ln2(x))))
        return self.head(x.mean(dim=1))


class UnusedLayerMLP(nn.Module):
    """A tanh MLP with a Linear layer that the forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(7, 5)
        self.unused = nn.Linear(4, 4)
        self.fc2 = nn.Linear(5, N_OUT)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # one sample
    batch_size: int


MODELS: dict[str, ModelSpec] = {
    "mlp_tanh": ModelSpec(TanhMLP, (7,), 20),
    "mlp_relu": ModelSpec(ReluMLP, (7,), 20),
    "cnn_bn": ModelSpec(BatchNormCNN, (2, 5, 5), 8),
    "cnn_in": ModelSpec(InstanceNormCNN, (2, 5, 5), 8),
    "transformer": ModelSpec(TransformerBlock, (4, 8), 6),
    "unused_layer": ModelSpec(UnusedLayerMLP, (7,), 20),
}


def build_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name].build().to(DTYPE).train()


# --------------------------------------------------------------------------------------------
# Losses (independent of worker.newton.losses) and batches


def ce_loss(model: nn.Module, batch: Batch) -> Tensor:
    x, y = batch
    return functional.cross_entropy(model(x), y)


def mse_loss(model: nn.Module, batch: Batch) -> Tensor:
    x, y = batch
    return functional.mse_loss(model(x), y)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "mse": mse_loss}


def make_batch(model_name: str, loss_name: str, seed: int, batch_size: int | None = None) -> Batch:
    spec = MODELS[model_name]
    gen = torch.Generator().manual_seed(seed)
    n = spec.batch_size if batch_size is None else batch_size
    x = torch.randn((n, *spec.input_shape), generator=gen, dtype=DTYPE)
    if loss_name == "ce":
        y = torch.randint(0, N_OUT, (n,), generator=gen)
    else:
        y = torch.randn((n, N_OUT), generator=gen, dtype=DTYPE)
    return x, y


# --------------------------------------------------------------------------------------------
# The restricted loss f(η) and its brute-force derivatives


def _layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    dims = tuple(range(-len(normalized_shape), 0))
    centred = input - input.mean(dim=dims, keepdim=True)
    out = centred * torch.rsqrt((centred * centred).mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


def _batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    shape = (1, -1) + (1,) * (input.dim() - 2)
    if training or running_mean is None or running_var is None:
        dims = (0, *range(2, input.dim()))
        centred = input - input.mean(dim=dims, keepdim=True)
        var = (centred * centred).mean(dim=dims, keepdim=True)
    else:
        centred = input - running_mean.reshape(shape)
        var = running_var.reshape(shape)
    out = centred * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    return out if bias is None else out + bias.reshape(shape)


def _instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    if not use_input_stats and running_mean is not None and running_var is not None:
        return _batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    shape = (1, -1) + (1,) * (input.dim() - 2)
    dims = tuple(range(2, input.dim()))
    centred = input - input.mean(dim=dims, keepdim=True)
    out = centred * torch.rsqrt((centred * centred).mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    return out if bias is None else out + bias.reshape(shape)


class DecomposedNorms(torch.overrides.TorchFunctionMode):
    """Runs F.layer_norm / F.batch_norm / F.instance_norm as primitive ops.

    torch 2.13's fused kernels give correct first and second derivatives but silently wrong third
    derivatives under nested autograd: their double backward treats the saved mean/invstd as
    constants (pytorch/pytorch#175754 for layer_norm, #186256 for train-mode batch_norm, and
    instance_norm, which runs batch_norm's kernel). The reference therefore differentiates this
    mathematically identical decomposition. Running statistics are not updated: the reference
    evaluates f on copies anyway.
    """

    def __torch_function__(
        self,
        func: Callable[..., object],
        types: object,
        args: Sequence[object] = (),
        kwargs: Mapping[str, object] | None = None,
    ) -> object:
        kwargs = kwargs or {}
        if func is functional.layer_norm:
            return _layer_norm(*args, **kwargs)  # type: ignore[arg-type]
        if func is functional.batch_norm:
            return _batch_norm(*args, **kwargs)  # type: ignore[arg-type]
        if func is functional.instance_norm:
            return _instance_norm(*args, **kwargs)  # type: ignore[arg-type]
        return func(*args, **kwargs)


class _LossModule(nn.Module):
    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Batch) -> Tensor:
        return self.loss_fn(self.model, batch)


def restricted_loss(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Batch,
    direction: Mapping[str, Tensor],
    groups: GroupNames,
) -> Callable[[Tensor], Tensor]:
    """f(η) = L(θ − Σ_s η_s u_[s]); parameters outside every group stay at θ."""
    wrapper = _LossModule(model, loss_fn)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    member = {n: s for s, names in enumerate(groups) for n in names}
    u = {n: direction[n].detach().to(DTYPE) for n in member}

    def f(eta: Tensor) -> Tensor:
        tensors: dict[str, Tensor] = {}
        for n, p in params.items():
            s = member.get(n)
            tensors[f"model.{n}"] = p if s is None else p - eta[s] * u[n]
        for n, b in buffers.items():  # fresh copies: train-mode BatchNorm may write into them
            tensors[f"model.{n}"] = b.clone()
        with DecomposedNorms():
            return functional_call(wrapper, tensors, (batch,))

    return f


@dataclass(frozen=True)
class Reference:
    loss: float
    g: Tensor  # (S,)
    H: Tensor  # (S, S)
    d3: Tensor  # (S,) diagonal of D
    D: Tensor | None  # (S, S, S) full third-derivative tensor, when asked for


def _grad_or_zero(out: Tensor, eta: Tensor, create_graph: bool) -> Tensor:
    if not out.requires_grad:
        return torch.zeros_like(eta)
    (grad,) = torch.autograd.grad(out, eta, retain_graph=True, create_graph=create_graph)
    return grad


def derivatives(f: Callable[[Tensor], Tensor], S: int, full: bool = False) -> Reference:
    """g, H, diag D (and the full D when `full`) of f at η = 0 by nested autograd, float64."""
    eta = torch.zeros(S, dtype=DTYPE, requires_grad=True)
    value = f(eta)
    df = _grad_or_zero(value, eta, create_graph=True)
    rows = [_grad_or_zero(df[s], eta, create_graph=True) for s in range(S)]
    H = torch.stack([r.detach() for r in rows])
    d3 = torch.zeros(S, dtype=DTYPE)
    D = torch.zeros(S, S, S, dtype=DTYPE) if full else None
    for s in range(S):
        for t in range(s, S) if full else (s,):
            third = -_grad_or_zero(rows[s][t], eta, create_graph=False).detach()
            if D is not None:
                for p in set(itertools.permutations((s, t))):
                    D[p[0], p[1], :] = third
            if t == s:
                d3[s] = third[s]
    return Reference(float(value.detach()), -df.detach(), H, d3, D)


def reference(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Batch,
    direction: Mapping[str, Tensor],
    groups: GroupNames,
    full: bool = False,
) -> Reference:
    f = restricted_loss(model, loss_fn, batch, direction, groups)
    return derivatives(f, len(groups), full=full)


def finite_differences(f: Callable[[Tensor], Tensor], S: int, h: float = 1e-3) -> Reference:
    """Central differences of docs/method.md §5 T1 (error O(h²))."""

    def fe(*terms: tuple[int, float]) -> float:
        eta = torch.zeros(S, dtype=DTYPE)
        for s, c in terms:
            eta[s] += c * h
        with torch.no_grad():
            return float(f(eta))

    g = torch.tensor([-(fe((s, 1)) - fe((s, -1))) / (2 * h) for s in range(S)], dtype=DTYPE)
    H = torch.zeros(S, S, dtype=DTYPE)
    for s, t in itertools.product(range(S), repeat=2):
        if s == t:
            H[s, s] = (fe((s, 1)) - 2 * fe() + fe((s, -1))) / h**2
        else:
            H[s, t] = (
                fe((s, 1), (t, 1))
                - fe((s, 1), (t, -1))
                - fe((s, -1), (t, 1))
                + fe((s, -1), (t, -1))
            ) / (4 * h**2)
    d3 = torch.tensor(
        [
            -(fe((s, 2)) - 2 * fe((s, 1)) + 2 * fe((s, -1)) - fe((s, -2))) / (2 * h**3)
            for s in range(S)
        ],
        dtype=DTYPE,
    )
    return Reference(fe(), g, H, d3, None)


# --------------------------------------------------------------------------------------------
# Directions and steps


def gradient(model: nn.Module, loss_fn: LossFn, batch: Batch) -> dict[str, Tensor]:
    """∇L at θ on `batch` for every trainable parameter (zeros where unused); model untouched."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    wrapper = _LossModule(model, loss_fn)
    leaves = {
        n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in model.named_parameters()
    }
    tensors = {f"model.{n}": t for n, t in leaves.items()}
    tensors.update({f"model.{n}": b.detach().clone() for n, b in model.named_buffers()})
    loss = functional_call(wrapper, tensors, (batch,))
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    return {
        n: torch.zeros_like(leaves[n]) if gr is None else gr.detach()
        for n, gr in zip(names, grads, strict=True)
    }


def random_direction(model: nn.Module, seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        n: 0.3 * torch.randn(p.shape, generator=gen, dtype=DTYPE)
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def stepped_parameters(
    model: nn.Module,
    direction: Mapping[str, Tensor],
    groups: GroupNames,
    eta: Tensor,
) -> dict[str, Tensor]:
    """θ − Σ_s η_s u_[s] as a name → tensor dict."""
    member = {n: s for s, names in enumerate(groups) for n in names}
    out = {}
    for n, p in model.named_parameters():
        s = member.get(n)
        out[n] = p.detach() if s is None else p.detach() - float(eta[s]) * direction[n]
    return out


def outputs_with(model: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """model(x) with the given parameters and copied buffers; the model is untouched."""
    tensors = dict(params)
    tensors.update({n: b.detach().clone() for n, b in model.named_buffers()})
    with torch.no_grad():
        return functional_call(model, tensors, (x,))


# --------------------------------------------------------------------------------------------
# The case table


@dataclass(frozen=True)
class Case:
    model: str
    loss: str
    rule: str
    direction: str = "grad"  # "grad": gradient on an independent batch; "random"

    @property
    def id(self) -> str:
        return f"{self.model}-{self.loss}-{self.rule}-{self.direction}"


@dataclass
class Problem:
    model: nn.Module
    loss_fn: LossFn
    batch: Batch  # the probe batch the summaries are computed on
    direction: dict[str, Tensor]
    group_names: list[tuple[str, ...]]


def make_problem(case: Case, groups: Sequence[Sequence[str]] | None = None) -> Problem:
    """Model, probe batch and direction for `case`; groups from
    `lrprobe.worker.newton.partition`."""
    model = build_model(case.model)
    loss_fn = LOSSES[case.loss]
    probe_batch = make_batch(case.model, case.loss, seed=1)
    if case.direction == "grad":
        direction = gradient(model, loss_fn, make_batch(case.model, case.loss, seed=2))
    else:
        direction = random_direction(model, seed=3)
    if groups is None:
        from lrprobe.worker.newton import partition

        groups = [grp.param_names for grp in partition(model, rule=case.rule)]
    return Problem(model, loss_fn, probe_batch, direction, [tuple(g) for g in groups])


CASES: list[Case] = [
    *(
        Case(m, loss, rule)
        for m in MODELS
        for loss in LOSSES
        for rule in ("layer", "tensor", "single")
    ),
    *(Case(m, "ce", "layer", "random") for m in MODELS),
]


def assert_scaled_close(
    got: Tensor, want: Tensor, rel: float = 1e-10, floor: float = 1e-14, what: str = ""
) -> None:
    """max |got − want| ≤ rel · max(max |want|, floor): relative to the scale of the whole array."""
    got, want = torch.as_tensor(got, dtype=DTYPE), torch.as_tensor(want, dtype=DTYPE)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    scale = max(float(want.abs().max()) if want.numel() else 0.0, floor)
    err = float((got - want).abs().max()) if want.numel() else 0.0
    assert err <= rel * scale, (
        f"{what}: max error {err:.3e} > {rel:.0e} × scale {scale:.3e}\ngot  {got}\nwant {want}"
    )
