"""Train a small MLP on digits while an lrprobe service re-probes it, then plot the rates.

Start the embedded service first (``make run`` prints an admin key), then::

    export LRPROBE_URL=http://127.0.0.1:8000 LRPROBE_API_KEY=lrp_...
    python examples/reprobe_training.py --steps 300 --every 100 --plot rates.png

Before training, the service probes the starting weights and the per-layer rates go into the
AdamW below (its decay/no-decay groups and its warm-up are kept). Every ``--every`` steps the
weights are uploaded and probed again while training goes on; each new recommendation is
applied at the next step. The run's jobs share the label ``--run``, so the dashboard's job
pages show the same rate history.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from lrprobe.client import Client
from lrprobe.integrations import Reprobe, ServiceProbe
from lrprobe.worker.intake.checkpoints.architectures.mlp import MLP, MLPConfig
from lrprobe.worker.intake.data.policy import DataPolicy
from lrprobe.worker.intake.data.references import open_dataset
from lrprobe.worker.newton import losses, minibatches

ARCH_CONFIG = {"sizes": [64, 32, 10], "activation": "tanh"}


def decay_groups(model: torch.nn.Module, decay: float = 0.01) -> list[dict]:
    """Weight decay on weights only, as the Hugging Face Trainer and nanoGPT do."""
    named = list(model.named_parameters())
    return [
        {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": decay},
        {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},
    ]


def main(argv: Sequence[str] | None = None) -> Reprobe:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100, help="re-probe every N steps")
    parser.add_argument("--run", default="digits-example", help="the run label of the jobs")
    parser.add_argument("--probe-batches", type=int, default=16, help="each probe's budget")
    parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait at the end")
    parser.add_argument("--plot", help="write the rate history to this image file")
    args = parser.parse_args(argv)

    # The same data and preprocessing as the service's builtin://digits: rates are recommended
    # for a model and its data.
    dataset = open_dataset("builtin://digits", DataPolicy())
    batches = minibatches(dataset.x, dataset.y, batch_size=64, seed=0)
    torch.manual_seed(0)
    model = MLP(MLPConfig(**ARCH_CONFIG))
    optimizer = torch.optim.AdamW(decay_groups(model), lr=1e-3)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(1.0, (t + 1) / 50))

    with Client() as client:
        prober = ServiceProbe(
            client, data="builtin://digits", loss="cross_entropy", arch="mlp",
            arch_config=ARCH_CONFIG, budget={"batches": args.probe_batches, "batch_size": 64},
            run=args.run,
        )  # fmt: skip
        with Reprobe(prober, model, optimizer, every=args.every, schedulers=[warmup]) as rp:
            for step in range(1, args.steps + 1):
                optimizer.zero_grad()
                loss = losses.cross_entropy(model, next(batches))
                loss.backward()
                optimizer.step()
                warmup.step()
                rp.step()
                if step % 50 == 0:
                    print(f"step {step}: loss {loss.item():.4f}")
            rp.wait(args.wait)  # the last probe's answer, applied at the boundary below
            rp.boundary(rp.steps)

    for event in rp.history.events:
        rates = ", ".join(f"{g} {lr:.3g}" for g, lr in event.lrs.items())
        print(f"step {event.step} (weights of step {event.probed_at}): {rates}")
    for step, why in rp.history.failures:
        print(f"step {step}: no recommendation ({why})", file=sys.stderr)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        ax = rp.history.plot()
        ax.figure.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"wrote {args.plot}")
    return rp


if __name__ == "__main__":
    main()
