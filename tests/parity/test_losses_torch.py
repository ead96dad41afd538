"""Every torch.nn loss against jax_impl.losses: value and gradient for every case of
parity/cases/loss_inputs.py in float64 (the semantic check), and in float32 for the edge cases
and one case of each loss (each case compiles its own XLA program: about 0.3 s of CPU).

Both sides are built from the case's spec string (torch through ``parity.spec.build_torch_loss``,
which turns ``weight``/``pos_weight`` tuples into tensors); the losses with parameters start
from the torch module's weights, converted by ``parity.convert.Converter`` under torch's
``state_dict`` names. The gradient is the vector-Jacobian product with the same random
cotangent on both sides, with respect to every differentiable input (and the parameters).
The JAX side runs under ``jax.jit``, so every case also shows the loss is jittable.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import math
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jax_impl.losses import LOSSES, from_torch
from jax_impl.spec import SpecError, parse_call
from parity.cases import loss_inputs
from parity.cases.loss_inputs import LOSS_CASES, LossCase
from parity.convert import Converter
from parity.spec import DTYPES, build_torch_loss

#: torch.nn classes named *Loss that jax_impl.losses does not implement, each with its reason.
NOT_SUPPORTED: dict[str, str] = {}

#: The losses that carry parameters: their builder is an nnx.Module class.
PARAMETERISED = tuple(name for name, builder in LOSSES.items() if isinstance(builder, type))

#: (rtol, atol relative to the largest finite |torch value| of the tensor): an element passes
#: when |jax - torch| <= rtol |torch| + atol * max|torch|. float64 is the semantic check.
TOLERANCES = {"float64": (1e-12, 1e-14), "float32": (1e-5, 1e-6)}


# ------------------------------------------------------------------------------------------
# Running one case on both sides


def _torch_loss(case: LossCase, dtype: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if not case.arguments:
        with warnings.catch_warnings():  # AdaptiveLogSoftmaxWithLoss's empty tail layers: "zero-element tensors"
            warnings.simplefilter("ignore", UserWarning)
            module = build_torch_loss(case.spec, dtype)
    else:  # build_torch_loss takes a spec only; add what the spec cannot hold
        call = parse_call(case.spec)
        kwargs = {k: torch.tensor(v, dtype=DTYPES[dtype][0]) if k in ("weight", "pos_weight") else v
                  for k, v in call.kwargs.items()}
        module = getattr(torch.nn, call.name)(**kwargs, **case.arguments)
    return module.to(DTYPES[dtype][0])


def _outputs(value) -> tuple:
    return tuple(value) if isinstance(value, tuple) else (value,)


def run_both(case: LossCase, dtype: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{quantity: (torch, jax)}`` for the case's outputs and gradients, as float64 numpy."""
    np_dtype, jax_dtype = DTYPES[dtype][2], DTYPES[dtype][1]
    inputs = case.make_inputs(np.random.default_rng(sum(map(ord, case.name))), np_dtype)
    torch_module = _torch_loss(case, dtype)

    # torch
    tensors = [torch.from_numpy(x.copy()) if isinstance(x, np.ndarray) else x for x in inputs]
    for i in case.differentiable:
        tensors[i].requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # broadcasting and KLDiv 'mean' warnings
        torch_out = _outputs(torch_module(*tensors))
    cotangent_rng = np.random.default_rng(7)
    cotangents = [cotangent_rng.uniform(0.5, 1.5, tuple(o.shape)).astype(np_dtype) for o in torch_out]
    params = dict(torch_module.named_parameters())
    wrt = [tensors[i] for i in case.differentiable] + list(params.values())
    total = sum((o * torch.from_numpy(c)).sum() for o, c in zip(torch_out, cotangents))
    torch_grads = torch.autograd.grad(total, wrt, allow_unused=True)
    torch_grads = [np.zeros(w.shape) if g is None else g.numpy() for w, g in zip(wrt, torch_grads)]

    # JAX
    arrays = [jnp.asarray(x) if isinstance(x, np.ndarray) else x for x in inputs]
    if case.loss in PARAMETERISED:
        module = from_torch(case.spec, dtype=jax_dtype, rngs=1, **case.arguments)
        assert isinstance(module, nnx.Module)
        converter = Converter.from_torch_module(torch_module)
        state = nnx.state(module)
        torch_state = {k: v.detach().numpy() for k, v in torch_module.state_dict().items()}
        nnx.update(module, converter.to_jax(torch_state, state))
        graphdef, jax_params, rest = nnx.split(module, nnx.Param, ...)
    else:
        loss_fn, jax_params = from_torch(case.spec, **case.arguments), {}

    def value_and_pullback(arrays, jax_params, cotangents):  # every array traced: one compile per spec and shapes
        def objective(differentiated, jax_params):
            args = list(arrays)
            for i, value in zip(case.differentiable, differentiated):
                args[i] = value
            fn = nnx.merge(graphdef, jax_params, rest) if case.loss in PARAMETERISED else loss_fn
            return _outputs(fn(*args))

        out, pullback = jax.vjp(objective, [arrays[i] for i in case.differentiable], jax_params)
        return out, pullback(cotangents)

    array_arguments = [x if isinstance(x, jax.Array) else None for x in arrays]
    jax_out, (input_grads, param_grads) = jax.jit(
        lambda traced, p, c: value_and_pullback([a if t is None else t for a, t in zip(arrays, traced)], p, c)
    )(array_arguments, jax_params, tuple(jnp.asarray(c) for c in cotangents))
    for out in jax_out:
        assert out.dtype == jax_dtype, f"{case.name}: a {dtype} input gave a {out.dtype} loss"

    results = {}
    for k, (t, j) in enumerate(zip(torch_out, jax_out)):
        results[f"output{k}"] = (t.detach().numpy(), np.asarray(j))
    for i, t, j in zip(case.differentiable, torch_grads, input_grads):
        results[f"grad input {i}"] = (t, np.asarray(j))
    if params:
        by_torch_name = converter.to_torch(param_grads)
        for name, t in zip(params, torch_grads[len(case.differentiable):]):
            results[f"grad {name}"] = (t, by_torch_name[name])
    return {key: (np.asarray(t, np.float64), np.asarray(j, np.float64)) for key, (t, j) in results.items()}


def errors(torch_value: np.ndarray, jax_value: np.ndarray) -> tuple[float, float]:
    """(largest relative error, largest error relative to the tensor's largest |value|) over the
    finite elements. Non-finite elements must agree exactly (nan with nan, inf with same inf)."""
    assert torch_value.shape == jax_value.shape, (torch_value.shape, jax_value.shape)
    finite = np.isfinite(torch_value)
    np.testing.assert_array_equal(jax_value[~finite], torch_value[~finite], err_msg="non-finite elements differ")
    if not finite.any():
        return 0.0, 0.0
    difference = np.abs(jax_value[finite] - torch_value[finite])
    magnitude = np.abs(torch_value[finite])
    scale = max(magnitude.max(), np.finfo(np.float64).tiny)
    relative = np.where(difference == 0, 0.0, difference / np.maximum(magnitude, np.finfo(np.float64).tiny))
    return float(relative.max()), float(difference.max() / scale)


def _check(case: LossCase, dtype: str) -> None:
    rtol, atol = TOLERANCES[dtype]
    for quantity, (torch_value, jax_value) in run_both(case, dtype).items():
        finite = np.isfinite(torch_value)
        errors(torch_value, jax_value)  # shapes and non-finite elements
        scale = np.abs(torch_value[finite]).max() if finite.any() else 0.0
        np.testing.assert_allclose(jax_value[finite], torch_value[finite], rtol=rtol, atol=atol * scale,
                                   err_msg=f"{case.name} ({dtype}): {quantity}")


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda case: case.name)
def test_value_and_gradient_match_torch_in_float64(case):
    _check(case, "float64")


def _float32_cases() -> list[LossCase]:
    """Compiling a case costs about 0.3 s of CPU, so float32 runs every case with a note (the
    edge cases: extreme values, overflow, clamps, NaN) and the first case of each other loss."""
    noted = [case for case in LOSS_CASES if case.note]
    firsts = {case.loss: case for case in reversed(LOSS_CASES)}
    return noted + [case for name, case in firsts.items() if name not in {c.loss for c in noted}]


@pytest.mark.parametrize("case", _float32_cases(), ids=lambda case: case.name)
def test_value_and_gradient_match_torch_in_float32(case):
    _check(case, "float32")


# ------------------------------------------------------------------------------------------
# Coverage: every torch loss class, every constructor argument, every reduction


def _torch_loss_classes() -> set[str]:
    return {name for name in dir(torch.nn) if name.endswith("Loss") and isinstance(getattr(torch.nn, name), type)}


def test_every_torch_loss_class_is_implemented_or_listed_with_a_reason():
    missing = sorted(_torch_loss_classes() - set(LOSSES) - set(NOT_SUPPORTED))
    assert not missing, f"torch {torch.__version__} has loss classes jax_impl.losses lacks: {missing}"
    assert all(reason.strip() for reason in NOT_SUPPORTED.values())
    assert not set(NOT_SUPPORTED) & set(LOSSES)
    assert set(LOSSES) <= _torch_loss_classes()  # nothing the installed torch cannot check


def test_every_loss_has_a_case_and_case_names_are_unique_and_well_formed():
    names = [case.name for case in LOSS_CASES]
    assert len(names) == len(set(names))
    assert all(case.name.split("/")[0] == case.loss for case in LOSS_CASES)
    assert set(LOSSES) <= {case.loss for case in LOSS_CASES}


#: Constructor arguments that select a torch implementation or placement, or are deprecated.
_NOT_OPTIONS = {"self", "size_average", "reduce", "device", "dtype", "options"}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_constructor_argument_and_reduction_has_a_case(name):
    cases = [case for case in LOSS_CASES if case.loss == name]
    given = set().union(*({*parse_call(c.spec).kwargs, *c.arguments} for c in cases))
    options = set(inspect.signature(getattr(torch.nn, name).__init__).parameters) - _NOT_OPTIONS
    assert options - given == set(), f"{name}: no case sets {sorted(options - given)}"
    if "reduction" in options:
        reductions = {parse_call(c.spec).kwargs.get("reduction", "mean") for c in cases}
        wanted = {"none", "mean", "sum"} | ({"batchmean"} if name == "KLDivLoss" else set())
        assert wanted <= reductions, f"{name}: no case for reduction {sorted(wanted - reductions)}"


def test_the_inputs_table_imports_numpy_only():
    tree = ast.parse(Path(loss_inputs.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"numpy", "dataclasses", "types", "collections", "typing", "__future__"}, imported


# ------------------------------------------------------------------------------------------
# Arguments: torch's wording for invalid ones, deprecated ones, what a spec cannot hold


@pytest.mark.parametrize("spec", [
    "CrossEntropyLoss(label_smoothing=1.5)",
    "CrossEntropyLoss(reduction='average')",
    "NLLLoss(reduction='batchmean')",
    "SmoothL1Loss(beta=-1.0)",
    "HuberLoss(delta=0.0)",
    "MultiMarginLoss(p=3)",
    "MultiMarginLoss(weight=((1.0, 2.0), (3.0, 4.0)))",
    "TripletMarginLoss(margin=0.0)",
    "TripletMarginLoss(margin=-1.0)",
    "TripletMarginWithDistanceLoss(margin=0.0)",
    "TripletMarginWithDistanceLoss(reduction='x')",
    "GaussianNLLLoss(reduction='x')",
    "PoissonNLLLoss(reduction='x')",
    "MultiLabelSoftMarginLoss(reduction='x')",
    "AdaptiveLogSoftmaxWithLoss(in_features=8, n_classes=10, cutoffs=[4, 12])",
    "AdaptiveLogSoftmaxWithLoss(in_features=8, n_classes=10, cutoffs=[])",
    "AdaptiveLogSoftmaxWithLoss(in_features=8, n_classes=10, cutoffs=[5, 5])",
    "LinearCrossEntropyLoss(in_features=8, num_classes=10, weight=(1.0, 2.0, 3.0))",
    "LinearCrossEntropyLoss(in_features=8, num_classes=10, label_smoothing=2.0)",
])
def test_invalid_arguments_raise_spec_error_with_torchs_wording(spec):
    with pytest.raises(SpecError) as ours:
        from_torch(spec)
    torch_message = _torch_error(spec)
    assert torch_message and torch_message in str(ours.value)


def _torch_error(spec: str) -> str | None:
    """torch's message for a spec, raised when built or on a first forward call (torch checks
    the reduction and some arguments only in forward)."""
    x = torch.rand(3, 4, dtype=torch.float64)
    try:
        module = build_torch_loss(spec, "float64")
        if "Triplet" in spec or isinstance(module, torch.nn.GaussianNLLLoss):
            module(x, x, x)
        elif isinstance(module, (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)):
            module(x, torch.tensor([0, 1, 2]))
        else:
            module(x, x)
    except SpecError as error:  # build_torch_loss wraps torch's constructor errors
        return str(error).split(": ", 1)[1]
    except Exception as error:
        return str(error)
    return None


@pytest.mark.parametrize("size_average, reduce", [
    (s, r) for s, r in itertools.product([None, True, False], repeat=2) if (s, r) != (None, None)])
def test_deprecated_size_average_and_reduce_are_rejected_naming_torchs_reduction(size_average, reduce):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_reduction = torch.nn.MSELoss(size_average=size_average, reduce=reduce).reduction
    with pytest.raises(SpecError, match=f"write reduction='{torch_reduction}'"):
        from_torch(f"MSELoss(size_average={size_average}, reduce={reduce})")


def test_elementwise_mean_is_rejected_with_the_replacement():
    with pytest.raises(SpecError, match="reduction='mean'"):
        from_torch("L1Loss(reduction='elementwise_mean')")


def test_keyword_arguments_add_what_a_spec_cannot_hold_and_may_not_repeat_it():
    weight = jnp.asarray([1.0, 2.0, 0.5, 1.0])
    logits, target = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4))), jnp.asarray([0, 1, 2])
    from_spec = from_torch("CrossEntropyLoss(weight=(1.0, 2.0, 0.5, 1.0))")(logits, target)
    assert from_torch("CrossEntropyLoss()", weight=weight)(logits, target) == from_spec
    with pytest.raises(SpecError, match="both"):
        from_torch("CrossEntropyLoss(weight=(1.0, 2.0, 0.5, 1.0))", weight=weight)
    with pytest.raises(SpecError, match="unknown argument 'distance_fn'.*did you mean 'distance_function'"):
        from_torch("TripletMarginWithDistanceLoss()", distance_fn=lambda a, b: a)
    with pytest.raises(SpecError, match="must be callable"):
        from_torch("TripletMarginWithDistanceLoss()", distance_function=3)
    with pytest.raises(SpecError, match="needs the argument.*cutoffs"):
        from_torch("AdaptiveLogSoftmaxWithLoss(in_features=4, n_classes=6)")


def _torch_call_error(loss: torch.nn.Module, *args) -> str:
    with pytest.raises(Exception) as raised:
        loss(*args)
    return str(raised.value)


def _t(x):
    return torch.from_numpy(np.asarray(x))


@pytest.mark.parametrize("spec, inputs", [
    ("CTCLoss(blank=5)", (np.zeros((4, 2, 5)), np.ones((2, 2), np.int64), np.asarray([4, 4]), np.asarray([2, 2]))),
    ("CTCLoss()", (np.zeros((4, 2, 5)), np.ones((2, 2), np.int64), np.asarray([5, 4]), np.asarray([2, 2]))),
    ("CTCLoss()", (np.zeros((4, 2, 5)), np.ones((2, 2), np.int64), np.asarray([4, 4]), np.asarray([3, 2]))),
    ("GaussianNLLLoss()", (np.zeros((3, 4)), np.zeros((3, 4)), np.ones((2, 4)))),
    ("GaussianNLLLoss()", (np.zeros((3, 4)), np.zeros((3, 4)), -np.ones((3, 4)))),
    ("BCELoss()", (np.full((3, 4), 0.5), np.full((3, 1), 0.5))),
    ("BCELoss()", (np.full((3, 4), 1.5), np.full((3, 4), 0.5))),
    ("BCEWithLogitsLoss()", (np.zeros((3, 4)), np.zeros((3, 1)))),
    ("MarginRankingLoss()", (np.zeros(3), np.zeros(3), np.ones((3, 1)))),
    ("TripletMarginLoss()", (np.zeros(3), np.zeros((2, 3)), np.zeros((2, 3)))),
    ("TripletMarginWithDistanceLoss()", (np.zeros(3), np.zeros(3), np.zeros((2, 3)))),
    ("CrossEntropyLoss()", (np.zeros((3, 4)), np.asarray([1, 7, 0]))),
    ("NLLLoss()", (np.zeros((3, 4)), np.asarray([1, -1, 0]))),
    ("CrossEntropyLoss(weight=(1.0, 2.0, 3.0))", (np.zeros((3, 4)), np.asarray([1, 2, 0]))),
    ("CrossEntropyLoss(ignore_index=1)", (np.zeros((3, 4)), np.full((3, 4), 0.25))),
    ("CrossEntropyLoss()", (np.zeros((3, 4)), np.zeros((3, 4), np.int64))),
    ("CosineEmbeddingLoss()", (np.zeros((3, 4)), np.zeros((3, 4)), np.ones((3, 1)))),
    ("CosineEmbeddingLoss()", (np.zeros(4), np.zeros(4), np.ones(1))),
    ("AdaptiveLogSoftmaxWithLoss(in_features=4, n_classes=6, cutoffs=[2])", (np.zeros((3, 4)), np.asarray([0, 6, 1]))),
])
def test_invalid_inputs_raise_value_error_with_torchs_wording(spec, inputs):
    torch_message = _torch_call_error(_torch_loss(LossCase("x/y", spec, None), "float64"), *map(_t, inputs))
    with pytest.raises(ValueError) as ours:
        loss = from_torch(spec)
        loss(*map(jnp.asarray, inputs))
    assert _shapes_as_tuples(str(ours.value).split(" (while")[0]) in _shapes_as_tuples(torch_message)


def _shapes_as_tuples(message: str) -> str:
    """torch prints shapes as ``torch.Size([3, 1])`` and dtypes as ``Long``, JAX as ``(3, 1)``
    and ``int64``: the same wording otherwise."""
    message = re.sub(r"torch\.Size\(\[([^\]]*)\]\)", r"(\1)", message)
    return re.sub(r"\bLong\b", "int64", message.replace(",)", ")"))


def test_ctc_rejects_concatenated_targets_shorter_than_the_lengths():
    with pytest.raises(ValueError, match="sum to 5"):
        from_torch("CTCLoss()")(jnp.zeros((4, 2, 5)), jnp.ones(3, jnp.int32), jnp.asarray([4, 4]), jnp.asarray([2, 3]))


# ------------------------------------------------------------------------------------------
# The parameterised losses: torch's state_dict names, and the whole module under nnx.jit


def test_parameterised_losses_mirror_torchs_state_dict_names():
    for spec in ["AdaptiveLogSoftmaxWithLoss(in_features=8, n_classes=10, cutoffs=[4, 8], head_bias=True)",
                 "LinearCrossEntropyLoss(in_features=6, num_classes=4, bias=True, weight=(1.0, 2.0, 3.0, 4.0))"]:
        torch_module, jax_module = _torch_loss(LossCase("x/y", spec, None), "float32"), from_torch(spec)
        converter = Converter.from_torch_module(torch_module)
        torch_names = set(torch_module.state_dict())
        jax_names = set(converter.to_torch(nnx.state(jax_module)))
        assert jax_names == torch_names, (spec, jax_names ^ torch_names)
        trained = set(converter.to_torch(nnx.state(jax_module, nnx.Param)))
        assert trained == {name for name, _ in torch_module.named_parameters()}  # the class weight is a buffer


def test_adaptive_log_softmax_log_prob_and_predict_match_torch():
    spec = "AdaptiveLogSoftmaxWithLoss(in_features=6, n_classes=10, cutoffs=[3, 7], head_bias=True)"
    case = LossCase("AdaptiveLogSoftmaxWithLoss/x", spec, None)
    torch_module = _torch_loss(case, "float64")
    module = from_torch(spec, dtype=jnp.float64)
    state = Converter.from_torch_module(torch_module).to_jax(
        {k: v.detach().numpy() for k, v in torch_module.state_dict().items()}, nnx.state(module))
    nnx.update(module, state)
    x = np.random.default_rng(3).standard_normal((5, 6))
    np.testing.assert_allclose(np.asarray(module.log_prob(jnp.asarray(x))),
                               torch_module.log_prob(_t(x)).detach().numpy(), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(module.predict(jnp.asarray(x))), torch_module.predict(_t(x)).numpy())


def test_a_parameterised_loss_trains_inside_nnx_jit():
    module = from_torch("LinearCrossEntropyLoss(in_features=6, num_classes=4, bias=True)", rngs=nnx.Rngs(3))
    x, y = jnp.asarray(np.random.default_rng(0).standard_normal((8, 6)), jnp.float32), jnp.arange(8) % 4
    optimizer = nnx.Optimizer(module, optax.sgd(0.5), wrt=nnx.Param)

    @nnx.jit
    def step(module, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: m(x, y))(module)
        optimizer.update(module, grads)
        return loss

    losses = [float(step(module, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0] and module.linear.kernel[...].dtype == jnp.float32


# ------------------------------------------------------------------------------------------
# Properties over random problems


@functools.cache
def _jitted_value_and_pullback(spec: str):
    """``(value, gradient w.r.t. the first argument)`` of a spec's loss for a cotangent, jitted
    once per spec (every argument traced), so examples that share a spec share a compile."""
    loss_fn = from_torch(spec)

    def value_and_pullback(first, rest, cotangent):
        value, pullback = jax.vjp(lambda x: loss_fn(x, *rest), first)
        return value, pullback(cotangent)[0]

    return jax.jit(value_and_pullback)


def _torch_value_and_grad(spec, first, rest, cotangent):
    torch_first = _t(first).requires_grad_()
    value = build_torch_loss(spec, "float64")(torch_first, *map(_t, rest))
    (grad,) = torch.autograd.grad((value * _t(cotangent)).sum(), torch_first)
    return value.detach().numpy(), grad.numpy()


def _assert_matches_torch(spec, first, rest, rng):
    torch_value, torch_grad = _torch_value_and_grad(spec, first, rest, cotangent := rng.uniform(0.5, 1.5, ()))
    if torch_value.shape:  # reduction='none': a cotangent per element
        torch_value, torch_grad = _torch_value_and_grad(spec, first, rest, cotangent := rng.uniform(0.5, 1.5, torch_value.shape))
    jax_value, jax_grad = _jitted_value_and_pullback(spec)(jnp.asarray(first), tuple(map(jnp.asarray, rest)),
                                                           jnp.asarray(cotangent))
    for torch_array, jax_array in [(torch_value, jax_value), (torch_grad, jax_grad)]:
        _, scaled = errors(np.asarray(torch_array, np.float64), np.asarray(jax_array, np.float64))
        assert scaled < 1e-12, spec


@settings(max_examples=10, deadline=None, derandomize=True)
@given(blank=st.sampled_from([0, 3]), zero_infinity=st.booleans(), seed=st.integers(0, 2**16))
def test_ctc_matches_torch_on_random_lengths_and_labels(blank, zero_infinity, seed):
    """(T, N, C, S) = (6, 3, 4, 3); input lengths 0..T and target lengths 0..S drawn at random, so
    empty targets, empty inputs and impossible alignments all occur. Per-sample losses (the
    reductions are LOSS_CASES'), few specs: each spec compiles a scan and its transpose."""
    reduction = "none"
    rng = np.random.default_rng(seed)
    frames, batch, classes, width = 6, 3, 4, 3
    targets = rng.choice([c for c in range(classes) if c != blank], (batch, width)).astype(np.int64)
    lengths = (rng.integers(0, frames + 1, batch), rng.integers(0, width + 1, batch))
    log_probs = _log_softmax_np(rng.standard_normal((frames, batch, classes)) * 2)
    spec = f"CTCLoss(blank={blank}, reduction={reduction!r}, zero_infinity={zero_infinity})"
    _assert_matches_torch(spec, log_probs, (targets, *lengths), rng)


def _log_softmax_np(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@settings(max_examples=10, deadline=None, derandomize=True)
@given(shape=st.sampled_from([(5, 3), (2, 3, 4), (3,)]), probabilities=st.booleans(), weighted=st.booleans(),
       smoothing=st.sampled_from([0.0, 0.05, 0.5, 1.0]), reduction=st.sampled_from(["none", "mean", "sum"]),
       ignore_index=st.sampled_from([-100, 0, 2]), seed=st.integers(0, 2**16))
def test_cross_entropy_matches_torch_on_random_options(shape, probabilities, weighted, smoothing, reduction,
                                                       ignore_index, seed):
    rng = np.random.default_rng(seed)
    class_axis = min(1, len(shape) - 1)
    logits = rng.standard_normal(shape) * 3
    if probabilities:
        target, ignore_index = np.exp(_log_softmax_np(np.moveaxis(rng.standard_normal(shape), class_axis, -1))), -100
        target = np.moveaxis(target, -1, class_axis)
    else:
        target = rng.integers(0, 3, shape[:1] + shape[2:] if len(shape) > 1 else ())
    weight = f"weight={tuple(np.round(rng.uniform(0.1, 2.0, 3), 3).tolist())}, " if weighted else ""
    spec = f"CrossEntropyLoss({weight}ignore_index={ignore_index}, reduction={reduction!r}, label_smoothing={smoothing})"
    _assert_matches_torch(spec, logits, (target,), rng)


# ------------------------------------------------------------------------------------------
# Where a stock optax loss differs from torch (catalogue section 5), and ours does not


def _rng_data(shape=(16, 5), seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * 2, rng.integers(0, shape[1], shape[0])


def test_optax_huber_loss_is_beta_times_torchs_smooth_l1():
    x, y = np.random.default_rng(1).standard_normal((2, 16, 5))
    torch_value = float(torch.nn.SmoothL1Loss(beta=0.5)(_t(x), _t(y)))
    stock = float(optax.losses.huber_loss(jnp.asarray(x), jnp.asarray(y), delta=0.5).mean())
    ours = float(from_torch("SmoothL1Loss(beta=0.5)")(jnp.asarray(x), jnp.asarray(y)))
    assert abs(stock - torch_value) > 0.1 * torch_value  # measured: stock is half of torch's
    assert math.isclose(stock / 0.5, torch_value, rel_tol=1e-12) and math.isclose(ours, torch_value, rel_tol=1e-14)


def test_optax_kl_divergence_mean_is_batchmean_not_torchs_mean():
    rng = np.random.default_rng(2)
    log_q, p = _log_softmax_np(rng.standard_normal((16, 5))), np.exp(_log_softmax_np(rng.standard_normal((16, 5))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_mean = float(torch.nn.KLDivLoss()(_t(log_q), _t(p)))
    torch_batchmean = float(torch.nn.KLDivLoss(reduction="batchmean")(_t(log_q), _t(p)))
    stock = float(optax.losses.kl_divergence(jnp.asarray(log_q), jnp.asarray(p)).mean())
    assert math.isclose(stock, torch_batchmean, rel_tol=1e-12)
    assert math.isclose(stock, 5 * torch_mean, rel_tol=1e-12)  # torch's 'mean' also divides by C = 5
    assert math.isclose(float(from_torch("KLDivLoss()")(jnp.asarray(log_q), jnp.asarray(p))), torch_mean, rel_tol=1e-13)


def test_optax_cross_entropy_has_no_class_weights_or_ignore_index():
    logits, labels = _rng_data()
    weight = (0.5, 1.0, 1.5, 2.0, 0.25)
    torch_weighted = float(torch.nn.CrossEntropyLoss(weight=_t(weight))(_t(logits), _t(labels)))
    per_sample = optax.losses.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(labels))
    naive = float((jnp.asarray(weight)[labels] * per_sample).mean())  # weights, but divided by N
    assert abs(naive - torch_weighted) > 0.05 * torch_weighted
    ours = float(from_torch(f"CrossEntropyLoss(weight={weight})")(jnp.asarray(logits), jnp.asarray(labels)))
    assert math.isclose(ours, torch_weighted, rel_tol=1e-13)
    ignored = labels.copy()
    ignored[:4] = -100
    stock_ignored = optax.losses.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(ignored))
    torch_ignored = float(torch.nn.CrossEntropyLoss()(_t(logits), _t(ignored)))
    assert np.isnan(np.asarray(stock_ignored[:4])).all() and np.isfinite(torch_ignored)  # measured: NaN per label -100
    assert math.isclose(float(from_torch("CrossEntropyLoss()")(jnp.asarray(logits), jnp.asarray(ignored))), torch_ignored,
                        rel_tol=1e-13)


def test_optax_sigmoid_binary_cross_entropy_has_no_pos_weight():
    rng = np.random.default_rng(4)
    logits, targets = rng.standard_normal((16, 5)) * 2, rng.uniform(0, 1, (16, 5))
    pos_weight = (3.0, 0.5, 1.0, 2.0, 4.0)
    torch_value = float(torch.nn.BCEWithLogitsLoss(pos_weight=_t(pos_weight))(_t(logits), _t(targets)))
    stock = float(optax.losses.sigmoid_binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets)).mean())
    torch_plain = float(torch.nn.BCEWithLogitsLoss()(_t(logits), _t(targets)))
    assert math.isclose(stock, torch_plain, rel_tol=1e-12)  # without pos_weight they agree
    assert abs(stock - torch_value) > 0.1 * torch_value
    ours = float(from_torch(f"BCEWithLogitsLoss(pos_weight={pos_weight})")(jnp.asarray(logits), jnp.asarray(targets)))
    assert math.isclose(ours, torch_value, rel_tol=1e-13)
