"""Showing a :class:`~parity.runner.ParityReport`: terminal tables, JSON, and a plot.

Every writer is atomic: the file appears complete under its name, or not at all.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from jax_impl.checkpoint import atomic_path
from parity.compare import StepComparison, TensorError, tolerance
from parity.runner import ParityReport
from parity.trace import FOUND_INF, SCALER_STATE, STAGES

__all__ = ["render", "to_json", "write_json", "write_plot", "SCHEMA"]

SCHEMA = "parity-report/1"

_STAGE_HEADERS = {"loss": "loss", "gradient": "grad", "lr": "lr", "optimizer_state": "opt state",
                  "parameters": "params", "buffers": "buffers"}

#: Hints for the first divergent stage: where such a difference usually comes from.
LIKELY_CAUSES = {
    "loss": "the forward pass or the loss differs: a weight converted in the wrong layout, a layer "
            "default (GELU approximation, LayerNorm eps, padding), or the loss reduction/weights",
    "gradient": "the gradients differ while the loss agrees: a forward difference too small to "
                "move the scalar loss (an activation's approximation, e.g. GELU tanh vs erf), or a "
                "derivative that differs (stop_gradient, a parameter left out of the "
                "differentiated tree, a custom VJP)",
    "lr": "the schedule differs: an off-by-one in when scheduler.step() runs, per-epoch vs "
          "per-step stepping, or a different formula past the schedule's end",
    "optimizer_state": "the optimizer's buffers differ: momentum/dampening on the first step, "
                       "beta or alpha values, or where eps enters",
    "parameters": "the update rule differs: eps inside vs outside the square root, bias "
                  "correction, weight decay coupled vs decoupled, or the sign (maximize)",
    "buffers": "running statistics differ: BatchNorm momentum convention or unbiased variance",
}


# ------------------------------------------------------------------------------------------
# Terminal


def _fmt(value: float | None, spec: str = ".6g") -> str:
    if value is None:
        return "-"
    if spec.endswith("f") and math.isfinite(value) and abs(value) >= 1e6:
        return format(value, ".6e")  # a diverging loss: keep the column narrow
    return format(value, spec)


def _error_cell(step: StepComparison, stage: str) -> Text:
    result = step.stages[stage]
    if not result.tensors:
        return Text("-", style="dim")
    value = result.max_abs
    text = "0" if value == 0 else ("inf" if math.isinf(value) else f"{value:.1e}")
    return Text(text, style="bold red" if not result.ok else "green")


def _rows_to_show(steps: list[StepComparison], limit: int) -> list[int | None]:
    """Indices of the steps to print (None marks elided rows): first and last steps, every
    failing step up to a few, and evenly spaced ones in between."""
    if len(steps) <= limit:
        return list(range(len(steps)))
    failing = [i for i, s in enumerate(steps) if not s.ok][:5]
    wanted = {0, 1, 2, len(steps) - 2, len(steps) - 1, *failing}
    stride = -(-len(steps) // max(1, limit // 2))
    wanted.update(range(0, len(steps), stride))
    shown: list[int | None] = []
    for index in sorted(wanted):
        if shown and shown[-1] is not None and index > shown[-1] + 1:
            if index == shown[-1] + 2:
                shown.append(index - 1)  # an ellipsis would hide just one row
            else:
                shown.append(None)
        shown.append(index)
    return shown


def step_table(report: ParityReport, limit: int = 30) -> Table:
    stages = [s for s in STAGES if any(step.stages[s].tensors for step in report.steps)]
    table = Table(title=f"Per-step parity ({report.dtype}, {report.mode} mode): max |jax - torch| per stage",
                  title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("step", "epoch", "torch loss", "jax loss", "lr"):
        table.add_column(column, justify="right", min_width=10 if column.endswith("loss") else None)
    scaled = any(_scaler_values(step) for step in report.steps)  # a GradScaler: its scale and skips
    if scaled:
        table.add_column("scale", justify="right")
        table.add_column("skip", justify="center")
    for stage in stages:
        table.add_column(_STAGE_HEADERS[stage], justify="right")
    table.add_column("", justify="center")
    for index in _rows_to_show(report.steps, limit):
        if index is None:
            table.add_row(*(["..."] + [""] * (len(stages) + 5 + 2 * scaled)), style="dim")
            continue
        step = report.steps[index]
        table.add_row(
            str(step.step), str(step.epoch), _fmt(step.torch_loss, ".8f"), _fmt(step.jax_loss, ".8f"),
            _fmt(step.torch_lr, ".4g" if scaled else ".6g"), *(_scaler_cells(step) if scaled else ()),
            *[_error_cell(step, s) for s in stages],
            Text("ok", style="green") if step.ok else Text("DIFF", style="bold red"),
        )
    if len(report.steps) > limit:
        table.caption = f"{len(report.steps)} steps; some rows elided (--all-steps shows them, --json records them)"
    return table


def _scaler_values(step: StepComparison) -> dict[str, TensorError]:
    """The GradScaler's entries of a step (found_inf, scale), by name; empty without one."""
    found = {e.name: e for e in step.stages["gradient"].tensors if e.name == FOUND_INF}
    return found | {e.name: e for e in step.stages["optimizer_state"].tensors if e.name == SCALER_STATE[0]}


def _scaler_cells(step: StepComparison) -> tuple[str, str]:
    """The scale after ``scaler.update()`` (torch's) and whether each side skipped the step."""
    values = _scaler_values(step)
    scale = values.get(SCALER_STATE[0])
    found = values.get(FOUND_INF)
    if found is None:
        return _fmt(scale.torch_value if scale else None, ".2g"), ""
    sides = (found.torch_value == 1.0, found.jax_value == 1.0)
    skipped = {(False, False): "", (True, True): "both"}.get(sides, "torch" if sides[0] else "JAX")
    return _fmt(scale.torch_value if scale else None, ".2g"), skipped


def epoch_table(report: ParityReport) -> Table:
    validated = any(summary.torch_val_loss is not None for summary in report.epochs)
    title = "Training and validation per epoch" if validated else "Training loss per epoch (mean over batches)"
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = ["epoch", "torch train loss", "jax train loss"]
    if validated:
        columns += ["torch val loss", "jax val loss", "torch val acc", "jax val acc"]
    for column in columns:
        table.add_column(column, justify="right")
    for summary in report.epochs:
        cells = [str(summary.epoch), _fmt(summary.torch_train_loss, ".6f"), _fmt(summary.jax_train_loss, ".6f")]
        if validated:
            cells += [_fmt(summary.torch_val_loss, ".6f"), _fmt(summary.jax_val_loss, ".6f"),
                      _fmt(summary.torch_val_accuracy, ".2%"), _fmt(summary.jax_val_accuracy, ".2%")]
        table.add_row(*cells, style=None if summary.val_ok else "red")
    return table


def divergence_lines(report: ParityReport) -> list[str]:
    lines = []
    found = report.first_divergence
    if found is not None:
        step, stage, error = found
        tol = tolerance(stage, report.dtype, step=step.step, mode=report.mode, overrides=report.tolerance_overrides)
        lines += [
            f"first divergence: step {step.step} (epoch {step.epoch}), stage {stage}, tensor {error.name}",
            f"  {error.describe()}",
            f"  tolerance: rtol {tol.rtol:.1e}, atol {tol.atol:.1e} ({tol.reason})",
            f"  likely cause: {LIKELY_CAUSES[stage]}",
        ]
    for summary in report.epochs:
        if not summary.val_ok:
            difference = abs(summary.jax_val_loss - summary.torch_val_loss)
            lines.append(
                f"validation loss differs in epoch {summary.epoch}: torch {summary.torch_val_loss:.10g} vs "
                f"jax {summary.jax_val_loss:.10g} (abs err {difference:.3g}; the loss tolerance applies)"
            )
    return lines


def render(report: ParityReport, console: Console, *, all_steps: bool = False) -> None:
    """Print the per-step table, the epoch table and the verdict."""
    config = report.config
    parts = [config.get("model", "model"), config.get("loss", ""), config.get("optimizer", "")]
    if config.get("scheduler"):
        parts.append(f"{config['scheduler']} per {config['scheduler_interval']}")
    if config.get("amp"):  # float32 parameters, the steps under autocast
        scaler = (f" + GradScaler(init_scale={config['init_scale']:g}, growth_interval={config['growth_interval']})"
                  if config.get("grad_scaler") else "")
        parts.append(f"float32, autocast {config['amp']}{scaler}")
    else:
        parts.append(report.dtype)
    parts.append(report.mode)
    if "data_name" in config:
        parts.append(
            f"data {config['data_name']}: {config['train_samples']} train / {config['val_samples']} val, "
            f"{config['input_size']} features, {config['num_classes']} classes"
        )
    console.print("[bold]parity[/]: " + " · ".join(parts), highlight=False)
    console.print(step_table(report, limit=len(report.steps) if all_steps else 30))
    if report.epochs:
        console.print(epoch_table(report))
    failing_steps = sum(not s.ok for s in report.steps)
    failing_epochs = sum(not e.val_ok for e in report.epochs)
    if report.ok:
        console.print(
            f"[bold green]PARITY HOLDS[/]: {len(report.steps)} steps, every stage within the "
            f"{report.dtype} tolerances ({report.seconds:.1f} s)"
        )
    else:
        what = f"{failing_steps} of {len(report.steps)} steps differ"
        if failing_epochs:
            what += f" and the validation loss of {failing_epochs} epoch(s) differs"
        console.print(f"[bold red]DIVERGENCE[/]: {what} beyond the {report.dtype} tolerances ({report.seconds:.1f} s)")
        for line in divergence_lines(report):
            console.print(line, highlight=False, markup=False)
        if report.halted:
            console.print(report.halted, highlight=False, markup=False)
    if report.nonfinite:
        console.print(f"[bold red]first non-finite value[/]: {report.nonfinite}", highlight=False)
    if report.localization is not None:
        console.print(f"\nStep {report.localization_step}, layer by layer:", highlight=False, markup=False)
        console.print(str(report.localization), highlight=False, markup=False)
    for table in stats_tables(report):
        console.print(table)
    if report.departure:
        console.print(departure_table(report))
        last = report.departure[-1]
        console.print(
            f"forgetting zero_grad: after {len(report.departure)} steps the loss is {last.torch_loss:.6g} instead of "
            f"{last.torch_correct_loss:.6g} in torch, {last.jax_loss:.6g} instead of {last.jax_correct_loss:.6g} in "
            f"JAX; the parameters are {last.torch_parameters:.1%} (torch) and {last.jax_parameters:.1%} (JAX) of "
            "their scale away from the correct loop's", highlight=False)


def departure_table(report: ParityReport, rows: int = 10) -> Table:
    """A run that forgets ``zero_grad``: each framework's forgetful loop against its correct loop."""
    table = Table(title="Forgetting zero_grad: each framework against its own correct loop (zero_grad every step)",
                  title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("step", "torch loss", "correct", "jax loss", "correct", "torch params off", "jax params off"):
        table.add_column(column, justify="right")
    steps = report.departure
    every = max(1, len(steps) // rows)
    for row in [d for d in steps if d.step % every == 0 or d is steps[-1]]:
        table.add_row(str(row.step), _fmt(row.torch_loss, ".6f"), _fmt(row.torch_correct_loss, ".6f"),
                      _fmt(row.jax_loss, ".6f"), _fmt(row.jax_correct_loss, ".6f"),
                      format(row.torch_parameters, ".2%"), format(row.jax_parameters, ".2%"))
    table.caption = "params off: the largest |forgetful - correct| of a tensor over its largest |correct| element"
    return table


def stats_tables(report: ParityReport) -> list[Table]:
    """``--stats``: the last step's gradient statistics and the last captured activation
    statistics, torch and JAX side by side (every step's are in the JSON)."""
    if not report.stats:
        return []
    last = report.stats[-1]
    gradients = Table(title=f"Gradient statistics, step {last.step}", box=box.SIMPLE_HEAD)
    for header in ("parameter", "norm torch", "norm JAX", "mean torch", "mean JAX", "max|g| torch", "max|g| JAX"):
        gradients.add_column(header, justify="left" if header == "parameter" else "right")
    for name, torch_values in last.torch_gradients.items():
        jax_values = last.jax_gradients.get(name)
        cells = [(_fmt(getattr(torch_values, f)), _fmt(getattr(jax_values, f)) if jax_values else "-")
                 for f in ("norm", "mean", "max_abs")]
        gradients.add_row(name, *(cell for pair in cells for cell in pair))
    tables = [gradients]
    captured = [s for s in report.stats if s.torch_activations is not None]
    if captured:
        shown = captured[-1]
        activations = Table(title=f"Activation statistics (module outputs), step {shown.step}", box=box.SIMPLE_HEAD)
        for header in ("module", "mean torch", "mean JAX", "std torch", "std JAX"):
            activations.add_column(header, justify="left" if header == "module" else "right")
        for name in list(shown.torch_activations) + [n for n in shown.jax_activations
                                                      if n not in shown.torch_activations]:
            torch_values, jax_values = shown.torch_activations.get(name), shown.jax_activations.get(name)
            activations.add_row(name, *(_fmt(v[i]) if v else "-" for i in (0, 1) for v in (torch_values, jax_values)))
        tables.append(activations)
    return tables


# ------------------------------------------------------------------------------------------
# JSON


def _number(value: float) -> float | str:
    """JSON has no inf or NaN: write them as strings."""
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _tensor_json(error: TensorError) -> dict[str, Any]:
    return {
        "tensor": error.name, "ok": error.ok, "max_abs": _number(error.max_abs),
        "max_rel": _number(error.max_rel), "tolerance_ratio": _number(error.ratio), "index": list(error.index),
        "torch_value": _number(error.torch_value), "jax_value": _number(error.jax_value),
        "mismatched": error.mismatched, "size": error.size, "problem": error.problem or None,
        "rounding_allowance": _number(error.rounding),
    }


def _step_json(step: StepComparison) -> dict[str, Any]:
    stages = {}
    for name, result in step.stages.items():
        worst = max(result.tensors, key=lambda t: t.ratio, default=None)
        stages[name] = {
            "ok": result.ok, "max_abs": _number(result.max_abs), "max_rel": _number(result.max_rel),
            "tolerance_ratio": _number(result.ratio),
            "rtol": result.tolerance.rtol, "atol": result.tolerance.atol,
            "worst_tensor": worst.name if worst else None,
            "first_failure": _tensor_json(result.first_failure) if result.first_failure else None,
        }
    return {
        "step": step.step, "epoch": step.epoch, "ok": step.ok,
        "torch": {"loss": _number(step.torch_loss), "lr": _number(step.torch_lr)},
        "jax": {"loss": _number(step.jax_loss), "lr": _number(step.jax_lr)},
        "stages": stages,
    }


def _tolerance_json(report: ParityReport, stage: str) -> dict[str, Any]:
    tol = tolerance(stage, report.dtype, overrides=report.tolerance_overrides)
    return {"rtol": tol.rtol, "atol": tol.atol, "reason": tol.reason, "grows_with_step": report.mode == "free"}


def _localization_json(report: ParityReport) -> dict[str, Any] | None:
    found = report.localization
    if found is None:
        return None
    if isinstance(found, str):  # the localisation itself failed
        return {"step": report.localization_step, "error": found}
    return {"step": report.localization_step, **found.to_dict()}


def _stats_json(stats: Any) -> dict[str, Any]:
    def numbers(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: numbers(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [numbers(v) for v in value]
        return _number(value) if isinstance(value, float) else value

    return numbers(stats.to_dict())


def to_json(report: ParityReport) -> dict[str, Any]:
    """The whole report as JSON-ready data; ``seconds`` is the only timing in it."""
    found = report.first_divergence
    first = None
    if found is not None:
        step, stage, error = found
        first = {"step": step.step, "epoch": step.epoch, "stage": stage, **_tensor_json(error),
                 "likely_cause": LIKELY_CAUSES[stage]}
    return {
        "schema": SCHEMA,
        "verdict": "parity" if report.ok else "divergence",
        "ok": report.ok,
        "config": report.config,
        "dtype": report.dtype,
        "mode": report.mode,
        "tolerances": {stage: _tolerance_json(report, stage) for stage in STAGES},
        "first_divergence": first,
        "halted": report.halted,
        "localization": _localization_json(report),
        "nonfinite": report.nonfinite,
        "stats": None if report.stats is None else [_stats_json(s) for s in report.stats],
        "departure_from_correct_loop": None if report.departure is None else [
            {key: (_number(value) if isinstance(value, float) else value) for key, value in vars(row).items()}
            for row in report.departure],
        "steps": [_step_json(step) for step in report.steps],
        "epochs": [
            {key: (_number(value) if isinstance(value, float) else value) for key, value in vars(summary).items()}
            for summary in report.epochs
        ],
        "versions": report.versions,
        "seconds": round(report.seconds, 3),
    }


def write_json(report: ParityReport, path: str | os.PathLike) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(to_json(report), indent=2) + "\n")


# ------------------------------------------------------------------------------------------
# Plot


def write_plot(report: ParityReport, path: str | os.PathLike) -> None:
    """A PNG: both frameworks' losses (top) and each stage's largest error as a fraction of
    its tolerance (bottom, log scale; above the line at 1 is a divergence), with the first
    divergence marked. Bit-identical agreement is drawn at 1e-4."""
    if not os.fspath(path).lower().endswith(".png"):
        raise ValueError(f"{path}: the plot is a PNG; give a .png file name")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [s.step for s in report.steps]
    figure, (losses, errors) = plt.subplots(2, 1, figsize=(10.5, 7), sharex=True, constrained_layout=True)
    losses.plot(steps, [s.torch_loss for s in report.steps], label="torch", linewidth=2)
    losses.plot(steps, [s.jax_loss for s in report.steps], label="jax", linestyle="--")
    losses.set_ylabel("training loss")
    losses.legend()
    losses.set_title(
        f"{report.config.get('model', '')} · {report.config.get('optimizer')} · {report.dtype} · "
        f"{report.mode}: {'parity holds' if report.ok else 'DIVERGENCE'}"
    )
    floor = 1e-4
    for stage in STAGES:
        if not any(s.stages[stage].tensors for s in report.steps):
            continue
        # exact agreement is drawn on the floor; failures beyond 1e6 are clipped
        values = [min(max(s.stages[stage].ratio, floor), 1e6) for s in report.steps]
        errors.semilogy(steps, values, label=stage, marker="." if len(steps) < 60 else None)
    errors.axhline(1.0, color="black", linewidth=1, label="tolerance")
    found = report.first_divergence
    if found is not None:
        step, stage, error = found
        errors.axvline(step.step, color="red", linestyle=":", label=f"first divergence ({stage}: {error.name})")
        losses.axvline(step.step, color="red", linestyle=":")
    errors.set_xlabel("optimizer step")
    errors.set_ylabel("max error / tolerance\n(exact agreement drawn at 1e-4)")
    errors.xaxis.set_major_locator(MaxNLocator(integer=True))
    errors.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    errors.grid(True, which="major", alpha=0.3)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
