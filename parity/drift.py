"""How far float32 training drifts from PyTorch's when nothing is resynchronised.

In float32 every framework rounds, so a faithful port still drifts from torch, by an amount
set by rounding alone; plain SGD shows that floor. An optimizer whose scalar factors are
rounded differently from torch's (optax keeps ``beta2 = 0.999`` as a float32 and computes
``1 - beta2`` after rounding, where torch computes it in Python double) drifts further. This
measures both: the same seeded float32 run of SimpleNN in torch, with our port, and with
stock optax, on identical batches, and the parameter drift after every step.

    python -m parity.drift            # the table quoted in the README (200 steps)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import jax_impl.losses
import jax_impl.optim
from jax_impl.step import init_train_state, make_train_step, make_update_step
from parity import convert, data
from parity.spec import build_models, build_torch_optimizer
from torch_ref import loop as torch_loop

__all__ = ["STOCK_OPTAX", "DriftResult", "parameter_drift", "main"]

#: torch spec -> the stock optax transformation a user would reach for, with torch's values
STOCK_OPTAX = {
    "SGD(lr=0.01, momentum=0.9)": lambda: optax.sgd(0.01, momentum=0.9),
    "Adam(lr=1e-3)": lambda: optax.adam(1e-3),
    "AdamW(lr=1e-3)": lambda: optax.adamw(1e-3, weight_decay=1e-2),  # torch's default decay, not optax's
    "NAdam(lr=2e-3)": lambda: optax.nadam(2e-3),
}


@dataclasses.dataclass(frozen=True)
class DriftResult:
    optimizer: str
    port: str  # "jax_impl", "stock optax", or "torch, 1 ulp away" (torch against itself)
    drift: tuple[float, ...]  # after each step: max |jax - torch| over all parameters / max |torch|
    rms: tuple[float, ...]  # after each step: ||jax - torch|| / ||torch|| over all parameters


def _batches(dataset: data.Dataset, steps: int, seed: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    batches, epoch = [], 0
    while len(batches) < steps:
        batches += list(dataset.train_batches(epoch, batch_size, seed, None, np.float32))
        epoch += 1
    return batches[:steps]


def _torch_gradients(model: torch.nn.Module, criterion, inputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    model.zero_grad()
    criterion(model(torch.from_numpy(inputs)), torch.from_numpy(targets)).backward()
    return {name: convert.to_numpy(p.grad) for name, p in model.named_parameters()}


def parameter_drift(optimizers: Sequence[str] = tuple(STOCK_OPTAX), steps: int = 200, seed: int = 0,
                    batch_size: int = 64, gradients: str = "torch") -> list[DriftResult]:
    """Free-running float32 drift of our port and of stock optax from torch, after each step.

    ``gradients="torch"``: each side's gradients are computed by torch's autograd at that
    side's own parameters, so the drift is the optimizer's alone (matmul summation order, which
    differs between the frameworks, is taken out). ``gradients="jax"``: the JAX side computes
    its own, as a whole port does.
    """
    dataset = data.digits(seed)
    batches = _batches(dataset, steps, seed, batch_size)
    criterion = torch.nn.CrossEntropyLoss()
    loss = jax_impl.losses.from_torch("CrossEntropyLoss()")
    results = []
    for optimizer in optimizers:
        torch_model, jax_model = build_models("SimpleNN", input_size=dataset.input_size,
                                              num_classes=dataset.num_classes, seed=seed, dtype="float32")
        converter = convert.Converter.from_torch_module(torch_model)
        initial = {name: convert.to_numpy(p) for name, p in torch_model.named_parameters()}
        torch_optimizer = build_torch_optimizer(optimizer, torch_model.parameters())
        torch_history = []
        for inputs, targets in batches:
            torch_loop.train_step(torch_model, criterion, torch_optimizer, torch.from_numpy(inputs),
                                  torch.from_numpy(targets))
            torch_history.append({name: convert.to_numpy(p) for name, p in torch_model.named_parameters()})
        results.append(_perturbed_torch(optimizer, dataset, batches, initial, torch_history, seed))
        ports = {"jax_impl": lambda: jax_impl.optim.from_torch(optimizer)}
        if optimizer in STOCK_OPTAX:
            ports["stock optax"] = STOCK_OPTAX[optimizer]
        for port, make_tx in ports.items():
            tx = make_tx()
            graphdef, state = init_train_state(jax_model, tx)
            params = converter.to_jax(initial, state.params, what="parameters")
            opt_state = tx.init(params)
            train_step = make_train_step(graphdef, loss, tx)
            update_step = make_update_step(tx)
            grad_model = copy.deepcopy(torch_model)  # evaluates torch's gradients at the JAX parameters
            drift, rms = [], []
            for (inputs, targets), torch_params in zip(batches, torch_history, strict=True):
                if gradients == "torch":
                    grad_model.load_state_dict({n: torch.from_numpy(np.array(a)) for n, a in converter.to_torch(params).items()})
                    grads = converter.to_jax(_torch_gradients(grad_model, criterion, inputs, targets), params)
                    params, opt_state, _ = update_step(params, opt_state, grads)
                else:
                    state, _ = train_step(state._replace(params=params, opt_state=opt_state),
                                          (jnp.asarray(inputs), jnp.asarray(targets)))
                    params, opt_state = state.params, state.opt_state
                worst, norm = _drift(converter.to_torch(params), torch_params)
                drift.append(worst)
                rms.append(norm)
            results.append(DriftResult(optimizer, port, tuple(drift), tuple(rms)))
    return results


def _drift(params: dict[str, np.ndarray], torch_params: dict[str, np.ndarray]) -> tuple[float, float]:
    """(max |a - torch| / max |torch|, ||a - torch|| / ||torch||) over all parameters."""
    scale = max(float(np.abs(p).max()) for p in torch_params.values())
    worst = max(float(np.abs(params[n] - p).max()) for n, p in torch_params.items()) / scale
    rms = float(np.sqrt(sum(np.sum((params[n] - p).astype(np.float64) ** 2) for n, p in torch_params.items())
                        / sum(np.sum(p.astype(np.float64) ** 2) for p in torch_params.values())))
    return worst, rms


def _perturbed_torch(optimizer: str, dataset: data.Dataset, batches, initial: dict[str, np.ndarray],
                     torch_history: list[dict[str, np.ndarray]], seed: int) -> DriftResult:
    """torch against itself started one ulp away (every parameter element moved one ulp up or
    down at random): the drift that rounding alone causes in this training, which no port can
    stay below once the training amplifies it."""
    rng = np.random.default_rng(seed)
    torch_model, _ = build_models("SimpleNN", input_size=dataset.input_size, num_classes=dataset.num_classes,
                                  seed=seed, dtype="float32")
    torch_model.load_state_dict({
        name: torch.from_numpy(np.nextafter(value, np.where(rng.random(value.shape) < 0.5, np.inf, -np.inf)
                                            .astype(value.dtype)))  # one ulp of value's own dtype
        for name, value in initial.items()
    })
    torch_optimizer = build_torch_optimizer(optimizer, torch_model.parameters())
    criterion = torch.nn.CrossEntropyLoss()
    drift, rms = [], []
    for (inputs, targets), torch_params in zip(batches, torch_history, strict=True):
        torch_loop.train_step(torch_model, criterion, torch_optimizer, torch.from_numpy(inputs), torch.from_numpy(targets))
        worst, norm = _drift({n: convert.to_numpy(p) for n, p in torch_model.named_parameters()}, torch_params)
        drift.append(worst)
        rms.append(norm)
    return DriftResult(optimizer, "torch, 1 ulp away", tuple(drift), tuple(rms))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parity.drift", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizer", action="append", help="torch spec (repeatable); default: SGD, Adam, AdamW, NAdam")
    parser.add_argument("--gradients", choices=("torch", "jax"), default="torch",
                        help="torch: both optimizers get torch's gradients at their own parameters (the "
                             "optimizer's drift alone); jax: the JAX side computes its own (a whole port)")
    parser.add_argument("--x64", choices=("off", "on"), default="off",
                        help="JAX's float64 support; off is JAX's default, as a JAX user runs")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be positive")
    jax.config.update("jax_enable_x64", args.x64 == "on")
    results = parameter_drift(tuple(args.optimizer or STOCK_OPTAX), steps=args.steps, gradients=args.gradients)
    print(f"float32 parameter drift from torch, free-running, SimpleNN on digits, batch 64, "
          f"gradients by {args.gradients}, x64 {args.x64} (max |jax - torch| / max |torch| over all parameters)")
    steps = [k for k in (10, 50) if k < args.steps] + [args.steps]
    header = " ".join(f"{f'max@{k}':>10}" for k in steps) + " " + " ".join(f"{f'rms@{k}':>10}" for k in steps)
    print(f"{'optimizer':<28} {'port':<18} {header}")
    for result in results:
        values = [result.drift[k - 1] for k in steps] + [result.rms[k - 1] for k in steps]
        print(f"{result.optimizer:<28} {result.port:<18} " + " ".join(f"{value:>10.2e}" for value in values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
