"""``parity bench``: the training step's speed in each framework and mode, on the same weights and batches.

Every mode trains the same model (converted from one seeded torch model) on the same cycle of
batches, in interleaved rounds (round r runs every mode for ``steps_per_round`` steps, so load
drift hits all alike). A step is timed alone: ``t = perf_counter(); step(); sync()``, where
``sync`` is ``block_until_ready`` on the JAX side. The first call (tracing and compilation) is
timed separately and then ``warmup`` steps run untimed. Before the timing, every mode runs
``check_steps`` steps in float64 from the same weights on the same batches and its parameters are
compared with PyTorch eager's after each step under the tolerances of :mod:`parity.compare`
(float64: semantic); a mode that differs has no time. The timed float32 run's final difference
from torch eager is reported as ``drift``, not checked (see the note above :func:`check_modes`).
Each round also times one large float32 matmul (:func:`matmul_probe`); a step's fraction of
peak divides its FLOP rate (XLA's count, median step) by that matmul's median rate over the same
rounds, so that the machine's speed at the time moves both alike.

A mode is one entry of :data:`MODES`: a builder ``build(setup) -> Runner`` (a step callable, a
sync, and a reader of its parameters under torch's names). The lead adds the NNX modes there.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import jax_impl.layers
import jax_impl.losses
import jax_impl.optim
from jax_impl.spec import SpecError
from jax_impl.stateful import make_nnx_train_step, make_split_nnx_train_step
from jax_impl.step import make_train_step
from parity import convert, data
from parity.compare import Tolerance, compare_tensors, tolerance
from parity.runner import _load_buffers, _torch_buffers, _torch_params, versions
from parity.spec import DTYPES, build_models, build_torch_loss, build_torch_optimizer

__all__ = ["BenchCase", "Setup", "Runner", "Mode", "MODES", "CASES", "QUICK_CASES", "BenchConfig", "ModeResult",
           "BenchResult", "run_bench", "peak_matmul_rate", "pool_comparison", "render", "write_json", "write_plot"]

LOSS = "CrossEntropyLoss()"
SGD = "SGD(lr=0.01, momentum=0.9)"
ADAM = "Adam(lr=0.001)"


@dataclasses.dataclass(frozen=True)
class BenchCase:
    """One benchmarked training configuration. Dropout is 0 so that every mode computes the same
    numbers without handing masks around (the masks' cost is not what is measured)."""

    name: str
    model: str
    batch_size: int
    optimizer: str
    data: str = "synthetic"  # 784 MNIST-shaped features; the Transformer takes digits' 64 tokens
    #: overrides of parity.compare.TOLERANCES for the parameter check, each with its reason
    tolerances: tuple[tuple[tuple[str, str], Tolerance], ...] = ()


#: Adam in float64: an element whose gradient is near eps (1e-8) has an update m / (sqrt(v) + eps)
#: that amplifies its gradient's last-bit rounding by about max|g| / eps; measured 1.7e-10 of the
#: tensor's scale after step 1 (SimpleNN b512, jax.jit vs torch eager), where the table allows
#: 1e-12. A semantic difference (a beta, eps or the bias correction) is above 1e-4.
_ADAM_F64 = ((("parameters", "float64"), Tolerance(0.0, 0.0, "Adam amplifies last-bit gradient rounding of "
                                                  "near-eps gradients (1.7e-10 measured)", tensor_rtol=1e-8)),)

CASES = (
    BenchCase("SimpleNN b64 SGD", "SimpleNN", 64, SGD),
    BenchCase("SimpleNN b64 Adam", "SimpleNN", 64, ADAM, tolerances=_ADAM_F64),
    BenchCase("SimpleNN b512 Adam", "SimpleNN", 512, ADAM, tolerances=_ADAM_F64),
    BenchCase("CNN b64 SGD", "CNN(dropout=0.0)", 64, SGD),
    BenchCase("Transformer b32 Adam", "Transformer(dropout=0.0)", 32, ADAM, data="digits", tolerances=_ADAM_F64),
)
QUICK_CASES = (BenchCase("SimpleNN b64 SGD", "SimpleNN", 64, SGD),)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every mode starts from: one seeded torch model, its NNX twin holding the same
    weights, and the batches (numpy) cycled through in order."""

    case: BenchCase
    torch_model: torch.nn.Module
    graphdef: nnx.GraphDef
    jax_params: nnx.State
    jax_rest: nnx.State
    converter: convert.Converter
    batches: tuple[tuple[np.ndarray, np.ndarray], ...]
    dtype: str = "float32"


class Runner(NamedTuple):
    step: Callable[[int], None]  # runs one training step on batch ``i % len(batches)``
    sync: Callable[[], None]  # waits until the step's results exist
    torch_params: Callable[[], dict[str, np.ndarray]]  # the current parameters under torch's names


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    side: str  # "torch" or "jax"
    build: Callable[[Setup], Runner]
    note: str = ""


def make_setup(case: BenchCase, *, seed: int = 0, distinct_batches: int = 8, dtype: str = "float32") -> Setup:
    dataset = data.load(case.data, seed)
    torch_model, jax_model = build_models(case.model, input_size=dataset.input_size,
                                          num_classes=dataset.num_classes, seed=seed, dtype=dtype)
    if getattr(torch_model, "takes_tokens", False):
        dataset = dataset.as_tokens(torch_model.vocab_size, model=case.model)
    available = dataset.batches_per_epoch(case.batch_size)
    batches = tuple(dataset.train_batches(0, case.batch_size, seed, min(distinct_batches, available),
                                          DTYPES[dtype][2]))
    converter = convert.Converter.from_torch_module(torch_model)
    graphdef, params, rest = nnx.split(jax_model, nnx.Param, ...)
    params = converter.to_jax(_torch_params(torch_model), params, what="parameters")
    rest = _load_buffers(converter, _torch_buffers(torch_model), rest)
    return Setup(case, torch_model, graphdef, params, rest, converter, batches, dtype)


# ------------------------------------------------------------------------------------------
# torch modes


def _torch_runner(setup: Setup, optimizer: str, *, compiled: bool = False) -> Runner:
    model = copy.deepcopy(setup.torch_model)
    criterion = build_torch_loss(LOSS, setup.dtype)
    torch_optimizer = build_torch_optimizer(optimizer, model.parameters())
    batches = [(torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y))) for x, y in setup.batches]

    def objective(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return criterion(model(inputs), targets)

    forward = torch.compile(objective) if compiled else objective

    def step(index: int) -> None:
        inputs, targets = batches[index % len(batches)]
        torch_optimizer.zero_grad(set_to_none=True)
        forward(inputs, targets).backward()
        torch_optimizer.step()

    def torch_params() -> dict[str, np.ndarray]:
        return {name: convert.to_numpy(value.detach()) for name, value in model.named_parameters()}

    return Runner(step, lambda: None, torch_params)


def _fused(spec: str) -> str:
    return spec[:-1] + ", fused=True)"


def fused_supported(spec: str) -> bool:
    """Whether the installed torch has a fused CPU kernel for this optimizer (SGD and Adam since 2.4)."""
    try:
        optimizer = build_torch_optimizer(_fused(spec), [torch.nn.Parameter(torch.zeros(2))])
        optimizer.param_groups[0]["params"][0].grad = torch.zeros(2)
        optimizer.step()
    except (SpecError, RuntimeError, ValueError):
        return False
    return True


def _torch_fused(setup: Setup) -> Runner:
    spec = setup.case.optimizer
    if fused_supported(spec):
        return _torch_runner(setup, _fused(spec))
    return _torch_runner(setup, spec[:-1] + ", foreach=True)")


# ------------------------------------------------------------------------------------------
# JAX modes


def _jax_parts(setup: Setup):
    tx = jax_impl.optim.from_torch(setup.case.optimizer)
    loss = jax_impl.losses.from_torch(LOSS)
    train_step = make_train_step(setup.graphdef, loss, tx, jit=False)  # the harness's step, unjitted
    state0 = (setup.jax_params, setup.jax_rest, tx.init(setup.jax_params))
    batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in setup.batches]
    return train_step, state0, batches


def _jax_torch_params(setup: Setup, params: nnx.State) -> dict[str, np.ndarray]:
    return setup.converter.to_torch(params)


def flat_jit_step(setup: Setup):
    """``jax.jit`` of the harness's train step over the flat list of state leaves (nnx.State
    pytrees cost microseconds to flatten on every call), the state's buffers donated.

    Returns ``(step, leaves, treedef, batches)``: ``leaves, loss = step(leaves, inputs, targets)``."""
    from jax_impl.step import TrainState

    train_step, (params, rest, opt_state), batches = _jax_parts(setup)
    leaves, treedef = jax.tree.flatten(TrainState(params, rest, opt_state))
    leaves = [jnp.array(leaf, copy=True) for leaf in leaves]  # donated: the setup's arrays stay alive

    def flat_step(leaves, inputs, targets):
        state, metrics = train_step(jax.tree.unflatten(treedef, leaves), (inputs, targets))
        return jax.tree.leaves(state), metrics["loss"]

    return jax.jit(flat_step, donate_argnums=0), leaves, treedef, batches


def _jax_jit(setup: Setup) -> Runner:
    step_fn, leaves, treedef, batches = flat_jit_step(setup)
    holder = {"leaves": leaves}

    def step(index: int) -> None:
        inputs, targets = batches[index % len(batches)]
        holder["leaves"], holder["loss"] = step_fn(holder["leaves"], inputs, targets)

    def sync() -> None:
        jax.block_until_ready(holder["leaves"])

    def torch_params() -> dict[str, np.ndarray]:
        return _jax_torch_params(setup, jax.tree.unflatten(treedef, holder["leaves"]).params)

    return Runner(step, sync, torch_params)


def _jax_eager(setup: Setup) -> Runner:
    from jax_impl.step import TrainState

    train_step, state0, batches = _jax_parts(setup)
    holder = {"state": TrainState(*state0)}

    def step(index: int) -> None:
        with jax.disable_jit():
            holder["state"], _ = train_step(holder["state"], batches[index % len(batches)])

    def sync() -> None:
        jax.block_until_ready(holder["state"])

    return Runner(step, sync, lambda: _jax_torch_params(setup, holder["state"].params))


def _nnx_parts(setup: Setup):
    """A fresh NNX model with the setup's variables, in training mode, and its ``nnx.Optimizer``."""
    model = nnx.merge(setup.graphdef, setup.jax_params, setup.jax_rest, copy=True)
    model.train()
    optimizer = nnx.Optimizer(model, jax_impl.optim.from_torch(setup.case.optimizer), wrt=nnx.Param)
    batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in setup.batches]
    return model, optimizer, jax_impl.losses.from_torch(LOSS), batches


def _nnx_jit(setup: Setup) -> Runner:
    model, optimizer, loss, batches = _nnx_parts(setup)
    train_step = make_nnx_train_step(loss)
    holder = {}

    def step(index: int) -> None:
        holder["metrics"] = train_step(model, optimizer, batches[index % len(batches)])

    return Runner(step, lambda: jax.block_until_ready((nnx.state(model), holder.get("metrics"))),
                  lambda: _jax_torch_params(setup, nnx.state(model, nnx.Param)))


def _nnx_split_once(setup: Setup) -> Runner:
    model, optimizer, loss, batches = _nnx_parts(setup)
    graphdef, state = nnx.split((model, optimizer))
    train_step = make_split_nnx_train_step(loss, graphdef)
    holder = {"state": state}

    def step(index: int) -> None:
        holder["state"], holder["metrics"] = train_step(holder["state"], batches[index % len(batches)])

    def torch_params() -> dict[str, np.ndarray]:
        nnx.update((model, optimizer), holder["state"])
        return _jax_torch_params(setup, nnx.state(model, nnx.Param))

    return Runner(step, lambda: jax.block_until_ready(holder["state"]), torch_params)


#: mode name -> Mode. The reference mode (``torch eager``) comes first; a mode is one entry (a
#: builder returning a Runner).
MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode("torch eager", "torch", lambda setup: _torch_runner(setup, setup.case.optimizer)),
        Mode("torch fused", "torch", _torch_fused,
             note="fused=True (torch's fused CPU kernel) where torch has one, else foreach=True"),
        Mode("torch.compile", "torch", lambda setup: _torch_runner(setup, setup.case.optimizer, compiled=True),
             note="torch.compile of model + loss (forward and backward); the optimizer eager"),
        Mode("jax.jit", "jax", _jax_jit, note="jax.jit of jax_impl.step's train step over flat leaves, donated"),
        Mode("jax eager", "jax", _jax_eager, note="the same train step under jax.disable_jit()"),
        Mode("nnx.jit", "jax", _nnx_jit, note="jax_impl.stateful.make_nnx_train_step: nnx.Optimizer + nnx.jit"),
        Mode("nnx split once", "jax", _nnx_split_once,
             note="jax_impl.stateful.make_split_nnx_train_step: nnx.split once, jax.jit over the state"),
    )
}
REFERENCE = "torch eager"


# ------------------------------------------------------------------------------------------
# measurement


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    cases: tuple[BenchCase, ...] = CASES
    modes: tuple[str, ...] = tuple(MODES)
    warmup: int = 5
    rounds: int = 10
    steps_per_round: int = 10
    matmul_size: int = 2048
    seed: int = 0
    dtype: str = "float32"  # of the timed run; the check runs in float64
    check_steps: int = 3  # steps of the float64 parity check (momentum acts from step 2)

    def __post_init__(self) -> None:
        unknown = [name for name in self.modes if name not in MODES]
        if unknown:
            raise SpecError(f"unknown mode(s) {', '.join(map(repr, unknown))}; choose from {', '.join(MODES)}")
        if REFERENCE not in self.modes:
            raise SpecError(f"modes must include {REFERENCE!r}: every mode's result is checked against it")
        for key in ("rounds", "steps_per_round", "matmul_size", "check_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"{key} must be a positive integer, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise SpecError(f"warmup must be a non-negative integer, got {self.warmup!r}")

    @property
    def steps(self) -> int:
        """Steps each mode takes: the first call, the warm-up, the timed ones."""
        return 1 + self.warmup + self.rounds * self.steps_per_round


@dataclasses.dataclass(frozen=True)
class ModeResult:
    case: str
    mode: str
    first_call_s: float
    times_ms: tuple[float, ...]  # every timed step
    parity_ok: bool
    parity: str  # the worst parameter's error against torch eager
    #: after the timed run: max |param - torch eager's| / max |torch eager's| over the tensors, in
    #: config.dtype; reported only (float32 free-running drifts chaotically)
    drift: float = float("nan")
    median_ms: float | None = None  # None when the mode's parameters differ from torch eager's
    ratio: float | None = None  # torch eager's median / this median: above 1 is faster
    flops: float | None = None  # XLA's count for the jitted step
    peak_fraction: float | None = None
    #: the matmul rate the fraction divides by: its median over the case's own rounds (or the
    #: run's peak where the rounds timed no matmul)
    peak_gflops: float | None = None


@dataclasses.dataclass(frozen=True)
class BenchResult:
    results: tuple[ModeResult, ...]
    peak_gflops: float
    peak_detail: dict[str, float]
    environment: dict[str, Any]
    config: dict[str, Any]


def step_flops(setup: Setup) -> float | None:
    """FLOPs of one jitted training step by XLA's cost analysis of the compiled step."""
    step_fn, leaves, _, batches = flat_jit_step(setup)
    analysis = step_fn.lower(leaves, *batches[0]).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None else None


def matmul_probe(size: int = 2048) -> Callable[[], dict[str, float]]:
    """A function that times one ``size`` x ``size`` float32 matmul in JAX and one in torch
    (compiled and warmed up here) and returns their rates, ``{"jax": GFLOP/s, "torch": GFLOP/s}``."""
    flops = 2.0 * size**3
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, size, size), dtype=np.float32)
    jax_a, jax_b = jnp.asarray(a), jnp.asarray(b)
    matmul = jax.jit(jnp.matmul)
    matmul(jax_a, jax_b).block_until_ready()
    torch_a, torch_b = torch.from_numpy(a), torch.from_numpy(b)
    torch.matmul(torch_a, torch_b)

    def probe() -> dict[str, float]:
        started = time.perf_counter()
        matmul(jax_a, jax_b).block_until_ready()
        jax_seconds = time.perf_counter() - started
        started = time.perf_counter()
        torch.matmul(torch_a, torch_b)
        torch_seconds = time.perf_counter() - started
        return {"jax": flops / jax_seconds / 1e9, "torch": flops / torch_seconds / 1e9}

    return probe


def peak_matmul_rate(size: int = 2048, repeats: int = 5,
                     probe: Callable[[], dict[str, float]] | None = None) -> dict[str, float]:
    """GFLOP/s of a ``size`` x ``size`` float32 matmul, best of ``repeats`` in JAX and in torch."""
    probe = probe or matmul_probe(size)
    best = {"jax": 0.0, "torch": 0.0}
    for _ in range(repeats):  # interleaved
        for side, rate in probe().items():
            best[side] = max(best[side], rate)
    rates = {f"{side}_gflops": rate for side, rate in best.items()}
    return rates | {"peak_gflops": max(rates.values()), "size": float(size)}


def environment() -> dict[str, Any]:
    return {"versions": versions(), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""),
            "fused_cpu": {name: fused_supported(spec) for name, spec in (("SGD", SGD), ("Adam", ADAM))}}


# Why the timed float32 run is not the check: its result after many free-running steps is no
# element-wise comparison (measured: after 106 steps even torch's fused SGD vs its eager SGD on
# the CNN differ in 4245 of 4608 conv2 weights, by up to 2e-3, from ReLU/max-pool decisions that
# flip on one-ulp differences); Adam is the extreme case:
# Adam's update m / sqrt(v) is a full +-lr step even for a gradient at rounding-noise level (a
# ReLU unit active on one sample by 1e-7), so one ulp at step 1 flips whole updates of about 1%
# of the elements by step 2; measured: torch's own fused Adam vs its foreach Adam, SimpleNN b64,
# fc1.weight max difference 3.7e-9 after step 1, 1.7e-3 after step 2 (and jax.jit vs torch eager
# 6e-6 after step 1, from gradients of |g| ~ eps that differ in their last bits).


def _parity(reference: dict[str, np.ndarray], params: dict[str, np.ndarray], stage_step: int,
            mode: str, dtype: str, case: BenchCase) -> tuple[bool, str]:
    """Every parameter against torch eager's (``parameters`` tolerance of parity.compare)."""
    tol = tolerance("parameters", dtype, step=stage_step, mode=mode, overrides=dict(case.tolerances))
    errors = [compare_tensors(name, reference[name], params.get(name, np.full(0, np.nan)), tol)
              for name in reference]
    worst = max(errors, key=lambda error: (not error.ok, error.ratio))
    return all(error.ok for error in errors), worst.describe()


def _copy(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.array(value, copy=True) for name, value in params.items()}


def check_modes(case: BenchCase, config: BenchConfig,
                progress: Callable[[str], None] | None = None) -> dict[str, tuple[bool, str]]:
    """The binding parity check, before any timing: every mode from the same weights on the same
    batches for ``check_steps`` steps in float64 (where the tolerances of parity.compare are
    semantic), its parameters against torch eager's after each step (free-running tolerance)."""
    setup = make_setup(case, seed=config.seed, dtype="float64")
    runners = {}
    for name in config.modes:
        if progress:
            progress(f"{case.name}: float64 check of {name}")
        runners[name] = MODES[name].build(setup)
    checked = {name: (True, "") for name in config.modes}
    for step in range(config.check_steps):
        params = {}
        for name, runner in runners.items():
            runner.step(step)
            runner.sync()
            params[name] = _copy(runner.torch_params())
        for name in config.modes:
            ok, detail = _parity(params[REFERENCE], params[name], step, "free", "float64", case)
            if checked[name][0]:
                checked[name] = (ok, f"float64, step {step + 1}: {detail}")
    return checked


def bench_case(case: BenchCase, config: BenchConfig, peak_gflops: float,
               progress: Callable[[str], None] | None = None,
               probe: Callable[[], dict[str, float]] | None = None) -> list[ModeResult]:
    """All modes of one case: the float64 check (:func:`check_modes`), then the timing in
    ``config.dtype``, interleaved; see the module docstring.

    With ``probe`` (:func:`matmul_probe`) every round also times one large matmul, and each
    mode's fraction of peak divides by that matmul's median rate over the case's rounds (the
    better of JAX and torch), so that a slower or faster spell of the machine moves the step and
    the peak alike; without it, by ``peak_gflops``."""
    checked = check_modes(case, config, progress)
    setup = make_setup(case, seed=config.seed, dtype=config.dtype)
    runners: dict[str, Runner] = {}
    first_call: dict[str, float] = {}
    for name in config.modes:
        if progress:
            progress(f"{case.name}: building and first call of {name}")
        runner = MODES[name].build(setup)
        started = time.perf_counter()
        runner.step(0)
        runner.sync()
        first_call[name] = time.perf_counter() - started
        for index in range(1, 1 + config.warmup):
            runner.step(index)
        runner.sync()
        runners[name] = runner
    times: dict[str, list[float]] = {name: [] for name in config.modes}
    round_peaks: list[float] = []
    index = 1 + config.warmup
    for round_index in range(config.rounds):
        if progress:
            progress(f"{case.name}: round {round_index + 1}/{config.rounds}")
        for name, runner in runners.items():
            for offset in range(config.steps_per_round):
                started = time.perf_counter()
                runner.step(index + offset)
                runner.sync()
                times[name].append(time.perf_counter() - started)
        if probe is not None:
            round_peaks.append(max(probe().values()))
        index += config.steps_per_round
    if round_peaks:
        peak_gflops = statistics.median(round_peaks)
    flops = step_flops(setup)
    final_reference = _copy(runners[REFERENCE].torch_params())
    reference_ms = statistics.median(times[REFERENCE]) * 1e3
    results = []
    for name in config.modes:
        ok, detail = checked[name]
        drift = float(max(np.abs(final_reference[key] - value).max() / max(np.abs(final_reference[key]).max(), 1e-30)
                          for key, value in _copy(runners[name].torch_params()).items()))
        median_ms = statistics.median(times[name]) * 1e3 if ok else None
        results.append(ModeResult(
            case=case.name, mode=name, first_call_s=first_call[name],
            times_ms=tuple(t * 1e3 for t in times[name]), parity_ok=ok, parity=detail, drift=drift,
            median_ms=median_ms,
            ratio=reference_ms / median_ms if median_ms else None, flops=flops,
            peak_fraction=(flops / (median_ms * 1e-3) / (peak_gflops * 1e9)) if median_ms and flops else None,
            peak_gflops=peak_gflops,
        ))
    return results


def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> BenchResult:
    if progress:
        progress("peak matmul rate")
    probe = matmul_probe(config.matmul_size)
    peak = peak_matmul_rate(config.matmul_size, probe=probe)
    results: list[ModeResult] = []
    for case in config.cases:
        results.extend(bench_case(case, config, peak["peak_gflops"], progress, probe))
    as_dict = dataclasses.asdict(config) | {"steps_per_mode": config.steps}
    return BenchResult(tuple(results), peak["peak_gflops"], peak, environment(), as_dict)


# ------------------------------------------------------------------------------------------
# max-pool: XLA's select-and-scatter (reduce_window's gradient) vs the tiled formulation


def _reduce_window_max(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """The former MaxPool2d(k) on tiling windows: ``reduce_window``, differentiated by XLA's select-and-scatter."""
    lead = x.ndim - 3
    return jax.lax.reduce_window(x, -np.inf, jax.lax.max, (1,) * lead + (kh, kw, 1), (1,) * lead + (kh, kw, 1),
                                 "VALID")


@contextlib.contextmanager
def _pool_formulation(name: str):
    """Trace MaxPool2d's tiling case with the ``"reduce_window"`` or the ``"tiled"`` formulation."""
    saved = jax_impl.layers._tiled_max_pool
    if name == "reduce_window":
        jax_impl.layers._tiled_max_pool = _reduce_window_max
    try:
        yield
    finally:
        jax_impl.layers._tiled_max_pool = saved


def pool_comparison(rounds: int = 10, steps_per_round: int = 10, seed: int = 0) -> dict[str, dict[str, float]]:
    """Median ms of (a) forward+backward of the CNN's first MaxPool2d(2) alone, on its (64, 28, 28,
    16) input, and (b) the whole jitted CNN b64 SGD step, each with the ``reduce_window``
    formulation and the tiled one, interleaved. Also checks both give the same gradients."""
    pool = jax_impl.layers.MaxPool2d(2)
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((64, 28, 28, 16)), jnp.float32)
    x = jnp.maximum(x, 0)  # after ReLU: ties at zero, as in the CNN
    cotangent = jnp.asarray(np.random.default_rng(seed + 1).standard_normal((64, 14, 14, 16)), jnp.float32)
    setup = make_setup(CASES[3], seed=seed)
    functions: dict[str, Callable[[], Any]] = {}
    outputs = {}
    for name in ("reduce_window", "tiled"):
        with _pool_formulation(name):
            grad = jax.jit(jax.grad(lambda v: jnp.vdot(pool(v), cotangent)))
            outputs[name] = np.asarray(grad(x))
            step_fn, leaves, _, batches = flat_jit_step(setup)
            holder = {"leaves": step_fn(leaves, *batches[0])[0]}
        functions[f"pool fwd+bwd, {name}"] = lambda grad=grad: grad(x).block_until_ready()

        def cnn_step(step_fn=step_fn, holder=holder, batches=batches):
            holder["leaves"], loss = step_fn(holder["leaves"], *batches[0])
            jax.block_until_ready(holder["leaves"])

        functions[f"CNN b64 SGD step, {name}"] = cnn_step
    if not np.array_equal(outputs["reduce_window"], outputs["tiled"]):
        raise AssertionError("the tiled max-pool's gradient differs from reduce_window's")
    times: dict[str, list[float]] = {name: [] for name in functions}
    for name, function in functions.items():
        function()
    for _ in range(rounds):
        for name, function in functions.items():
            for _ in range(steps_per_round):
                started = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - started)
    return {name: {"median_ms": statistics.median(values) * 1e3} for name, values in times.items()}


# ------------------------------------------------------------------------------------------
# output


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def render(result: BenchResult, console, pool: dict[str, dict[str, float]] | None = None) -> None:
    from rich.table import Table

    peak = result.peak_detail
    env = result.environment
    console.print(f"peak float32 matmul ({int(peak['size'])}^2): JAX {peak['jax_gflops']:.1f} GFLOP/s, torch "
                  f"{peak['torch_gflops']:.1f} GFLOP/s; peak = best of both = {result.peak_gflops:.1f} GFLOP/s")
    console.print(f"threads: torch {env['torch_threads']} (interop {env['torch_interop_threads']}), "
                  f"{env['cpu_count']} CPUs, JAX backend {env['jax_backend']}; fused CPU optimizers in torch: "
                  + ", ".join(f"{k} {'yes' if v else 'no (foreach used)'}" for k, v in env["fused_cpu"].items()))
    console.print(" ".join(f"{name} {version}" for name, version in env["versions"].items()))
    table = Table(title=f"median ms per training step ({result.config['rounds']} interleaved rounds x "
                        f"{result.config['steps_per_round']} steps, after {result.config['warmup']} warm-up)")
    for column, justify in (("case", "left"), ("mode", "left"), ("ms/step", "right"), ("steps/s", "right"),
                            ("vs torch eager", "right"), ("first call s", "right"), ("MFLOP/step", "right"),
                            ("% of peak", "right"), ("parity (f32 drift)", "left")):
        table.add_column(column, justify=justify)
    for row in result.results:
        table.add_row(row.case, row.mode, _fmt(row.median_ms, ".3f"),
                      _fmt(1e3 / row.median_ms if row.median_ms else None, ".0f"), _fmt(row.ratio, ".2f") + "x"
                      if row.ratio else "-", f"{row.first_call_s:.2f}",
                      _fmt(row.flops / 1e6 if row.flops else None, ".1f"),
                      _fmt(100 * row.peak_fraction if row.peak_fraction else None, ".1f"),
                      f"ok ({row.drift:.0e})" if row.parity_ok else f"[red]DIFFERS: {row.parity}[/]")
    console.print(table)
    round_peaks = {row.case: row.peak_gflops for row in result.results if row.peak_gflops}
    if round_peaks:
        console.print("% of peak: the step's FLOP rate over the matmul rate measured in the same rounds (median of "
                      "one matmul per round, the better of JAX and torch): "
                      + ", ".join(f"{case} {rate:.1f}" for case, rate in round_peaks.items()) + " GFLOP/s")
    if pool:
        pool_table = Table(title="MaxPool2d(2) formulations (interleaved; median ms)")
        pool_table.add_column("what")
        pool_table.add_column("ms", justify="right")
        for name, values in pool.items():
            pool_table.add_row(name, f"{values['median_ms']:.3f}")
        console.print(pool_table)


def to_json(result: BenchResult, pool: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    return {"peak_gflops": result.peak_gflops, "peak_matmul": result.peak_detail,
            "environment": result.environment, "config": _jsonable(result.config),
            "results": [dataclasses.asdict(row) for row in result.results], "pool": pool}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def write_json(result: BenchResult, path: str, pool: dict[str, dict[str, float]] | None = None) -> None:
    import json

    text = json.dumps(to_json(result, pool), indent=2)
    with open(path, "w") as handle:  # serialised first: nothing half-written on error
        handle.write(text)


def write_plot(result: BenchResult, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(row.case for row in result.results))
    modes = list(dict.fromkeys(row.mode for row in result.results))
    figure, axes = plt.subplots(1, len(cases), figsize=(3.2 * len(cases), 3.6), squeeze=False)
    for axis, case in zip(axes[0], cases):
        rows = {row.mode: row for row in result.results if row.case == case}
        values = [rows[mode].median_ms if mode in rows and rows[mode].median_ms else 0.0 for mode in modes]
        axis.bar(range(len(modes)), values, color=[f"C{i}" for i in range(len(modes))])
        axis.set_xticks(range(len(modes)), modes, rotation=60, ha="right", fontsize=8)
        axis.set_yscale("log")
        axis.set_title(case, fontsize=9)
        axis.set_ylabel("median ms / step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parse_modes(text: str | None) -> tuple[str, ...]:
    if not text:
        return tuple(MODES)
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_cases(names: Sequence[str] | None, quick: bool) -> tuple[BenchCase, ...]:
    if not names:
        return QUICK_CASES if quick else CASES
    known = {case.name: case for case in CASES}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SpecError(f"unknown case(s) {', '.join(map(repr, unknown))}; choose from "
                        f"{', '.join(map(repr, known))}")
    return tuple(known[name] for name in names)
