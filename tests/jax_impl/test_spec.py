"""Spec strings: parsed with ast, literals only; unknown names and arguments are errors that
list the valid ones."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jax_impl.losses
import jax_impl.optim
import jax_impl.schedules
from jax_impl.spec import CallSpec, SpecError, parse_call


@pytest.mark.parametrize("text, name, kwargs", [
    ("SGD", "SGD", {}),
    ("SGD()", "SGD", {}),
    ("  SGD(lr=0.01, momentum=0.9)  ", "SGD", {"lr": 0.01, "momentum": 0.9}),
    ("SGD(lr=1e-3, nesterov=True, foreach=None)", "SGD", {"lr": 1e-3, "nesterov": True, "foreach": None}),
    ("X(a=-0.5, b=-3, c=-1e-8)", "X", {"a": -0.5, "b": -3, "c": -1e-8}),
    ("Adam(betas=(0.9, 0.999))", "Adam", {"betas": (0.9, 0.999)}),
    ("X(a=[1, 2], b=(), c=(1,))", "X", {"a": [1, 2], "b": (), "c": (1,)}),
    ("X(a=inf, b=-inf, c=(1, [2, -inf]))", "X", {"a": math.inf, "b": -math.inf, "c": (1, [2, -math.inf])}),
    ("CrossEntropyLoss(reduction='sum')", "CrossEntropyLoss", {"reduction": "sum"}),
    ('CrossEntropyLoss(reduction="none")', "CrossEntropyLoss", {"reduction": "none"}),
])
def test_parse_call_reads_literals(text, name, kwargs):
    call = parse_call(text)
    assert call.name == name
    assert dict(call.kwargs) == kwargs
    for key, value in kwargs.items():
        assert type(call.kwargs[key]) is type(value), key  # a tuple stays a tuple, a list a list


def test_nan_is_a_named_constant():
    assert math.isnan(parse_call("X(a=nan)").kwargs["a"])


@pytest.mark.parametrize("text, fragment", [
    ("SGD(0.01)", "keyword"),  # positional
    ("SGD(0.01, momentum=0.9)", "keyword"),
    ("SGD(lr=float('inf'))", "not a literal"),  # a call
    ("SGD(lr=math.pi)", "not a literal"),  # attribute access
    ("torch.optim.SGD(lr=0.1)", "write the class name alone, e.g. SGD(...)"),
    ("SGD(**{'lr': 0.1})", "'**'"),
    ("SGD(lr=__import__('os').system('echo pwned'))", "not a literal"),
    ("__import__('os')", "keyword"),
    ("SGD(lr=lr)", "not a literal"),  # a name that is not inf/nan
    ("SGD(lr=1+2)", "not a literal"),
    ("SGD(lr=--1)", "not a literal"),
    ("SGD(lr=(1, f()))", "not a literal"),  # inside a tuple
    ("SequentialLR(schedulers=[LinearLR(0.5)])", "not a literal"),  # nested, positional
    ("SequentialLR(schedulers=[torch.LinearLR()])", "not a literal"),  # nested, attribute
    ("SGD(lr=f'{1}')", "not a literal"),
    ("SGD(lr=lambda: 1)", "not a literal"),
    ("SGD(lr=1); import os", "malformed"),
    ("SGD()(lr=1)", "expected Name"),
    ("SGD(lr=0.1", "malformed"),
    ("1.5", "expected Name"),
    ("", "expected a spec"),
    ("   ", "expected a spec"),
])
def test_parse_call_rejects(text, fragment):
    with pytest.raises(SpecError) as raised:
        parse_call(text)
    assert fragment in str(raised.value)


@pytest.mark.parametrize("value", [None, 0.01, b"SGD", ["SGD"]])
def test_parse_call_rejects_non_strings(value):
    with pytest.raises(SpecError):
        parse_call(value)


def test_a_spec_is_never_evaluated(tmp_path, capfd):
    target = tmp_path / "created"
    for text in (f"SGD(lr=open({str(target)!r}, 'w'))", f"SGD(lr=[open({str(target)!r}, 'w')])",
                 "SGD(lr=print('evaluated'))"):
        with pytest.raises(SpecError):
            parse_call(text)
    assert not target.exists()
    assert "evaluated" not in capfd.readouterr().out


@pytest.mark.parametrize("text", ["X(a={[1]})", "X(a={{}: 1})"])
def test_unhashable_literals_are_a_spec_error(text):
    with pytest.raises(SpecError):
        parse_call(text)


def test_a_repeated_keyword_is_an_error():
    with pytest.raises(SpecError, match="'lr' is given twice"):
        parse_call("SGD(lr=1, lr=2)")


_identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda s: s not in {"if", "in", "is", "or", "as", "def", "del", "for", "and", "not", "try", "else", "elif",
                        "from", "with", "pass", "None", "True", "False", "class", "while", "yield", "break",
                        "raise", "async", "await", "global", "lambda", "import", "return", "assert",
                        "except", "finally", "continue", "nonlocal"})
_scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
            | st.text(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner), max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(["SGD", "Adam", "StepLR", "X"]), kwargs=st.dictionaries(_identifiers, _values, max_size=4))
def test_parse_call_round_trips_str_of_a_call_spec(name, kwargs):
    call = CallSpec(name, kwargs)
    assert parse_call(str(call)) == call


# ------------------------------------------------------------------------------------------
# Unknown names and arguments: SpecError listing the valid ones, with a suggestion

@pytest.mark.parametrize("from_torch, registry, spec, suggestion", [
    (jax_impl.optim.from_torch, jax_impl.optim.OPTIMIZERS, "SGDM(lr=0.1)", "SGD"),
    (jax_impl.optim.from_torch, jax_impl.optim.OPTIMIZERS, "adamw(lr=0.1)", "AdamW"),
    (jax_impl.losses.from_torch, jax_impl.losses.LOSSES, "CrossEntropy()", "CrossEntropyLoss"),
    (lambda spec: jax_impl.schedules.from_torch(spec, 0.1), jax_impl.schedules.SCHEDULERS, "StepLr(step_size=2)", "StepLR"),
])
def test_unknown_name_lists_the_supported_ones_and_suggests_one(from_torch, registry, spec, suggestion):
    with pytest.raises(SpecError) as raised:
        from_torch(spec)
    message = str(raised.value)
    assert spec.split("(")[0] in message
    assert f"did you mean {suggestion!r}" in message
    for name in registry:
        assert name in message.split("supported")[1]


def test_unknown_name_without_a_close_match_has_no_suggestion():
    with pytest.raises(SpecError) as raised:
        jax_impl.optim.from_torch("Lion(lr=0.1)")
    assert "did you mean" not in str(raised.value) and "SGD" in str(raised.value)


@pytest.mark.parametrize("from_torch, spec, wrong, suggestion, valid", [
    (jax_impl.optim.from_torch, "SGD(lr=0.1, momentun=0.9)", "momentun", "momentum",
     ["lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"]),
    (jax_impl.optim.from_torch, "Adam(lr=0.1, beta=(0.9, 0.99))", "beta", "betas",
     ["lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"]),
    (jax_impl.losses.from_torch, "CrossEntropyLoss(label_smothing=0.1)", "label_smothing", "label_smoothing",
     ["weight", "ignore_index", "reduction", "label_smoothing"]),
    (lambda spec: jax_impl.schedules.from_torch(spec, 0.1), "StepLR(stepsize=2)", "stepsize", "step_size",
     ["step_size", "gamma"]),
])
def test_unknown_argument_lists_the_valid_ones_and_suggests_one(from_torch, spec, wrong, suggestion, valid):
    with pytest.raises(SpecError) as raised:
        from_torch(spec)
    message = str(raised.value)
    assert repr(wrong) in message and f"did you mean {suggestion!r}" in message
    listed = message.split("valid arguments:")[1]
    for name in valid:
        assert name in listed, name


@pytest.mark.parametrize("spec", ["SGD(params=[1.0])", "SGD(lr=0.1, optimizer=1)"])
def test_arguments_a_spec_may_not_set_are_unknown(spec):
    with pytest.raises(SpecError, match="unknown argument"):
        jax_impl.optim.from_torch(spec)


@pytest.mark.parametrize("spec", ["StepLR(step_size=2, base_lr=0.5)", "StepLR(step_size=2, optimizer=None)"])
def test_scheduler_arguments_the_harness_supplies_are_unknown(spec):
    with pytest.raises(SpecError, match="unknown argument"):
        jax_impl.schedules.from_torch(spec, 0.1)


@pytest.mark.parametrize("spec", [
    "CrossEntropyLoss(size_average=True)",  # deprecated in torch: an error, not silently ignored
    "CrossEntropyLoss(reduce=False)",
    "CrossEntropyLoss(reduction='average')",
    "CrossEntropyLoss(label_smoothing=1.5)",
])
def test_unsupported_or_invalid_loss_arguments_are_errors(spec):
    with pytest.raises(SpecError):
        jax_impl.losses.from_torch(spec)


@pytest.mark.parametrize("spec", ["StepLR(step_size=0)", "StepLR(step_size=2.5)", "StepLR(step_size=2, last_epoch=3)"])
def test_invalid_scheduler_arguments_are_errors(spec):
    with pytest.raises(SpecError):
        jax_impl.schedules.from_torch(spec, 0.1)


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)


def test_nested_specs_parse_to_call_specs_and_print_as_written():
    text = "SequentialLR(schedulers=[LinearLR(start_factor=0.1, total_iters=5), ExponentialLR(gamma=0.9)], milestones=[5])"
    call = parse_call(text)
    inner = call.kwargs["schedulers"]
    assert [c.name for c in inner] == ["LinearLR", "ExponentialLR"]
    assert inner[0].kwargs == {"start_factor": 0.1, "total_iters": 5}
    assert str(call) == text
