"""The ``parity`` command.

Exit codes: 0 parity holds, 1 a divergence was found, 2 bad input (a one-line reason on
stderr, no traceback, and no output file written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_PARITY, EXIT_DIVERGENCE, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        # an unknown option after a subcommand is reported with that subcommand's usage
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = f"{self.prog} {parsed.command}" if getattr(parsed, "command", None) else self.prog
            self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: unrecognized arguments: {' '.join(extra)} "
                                      f"(see {command} --help)\n")
        return parsed


class BadInput(Exception):
    pass


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is None or False (which say nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    from parity.spec import MODES, RunSpec

    defaults = RunSpec()
    parser = _Parser(prog="parity", description="Check that a JAX port trains exactly like its PyTorch original.")
    parser.add_argument("--version", action="store_true", help="print the versions of the frameworks and exit")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    run = commands.add_parser(
        "run",
        help="train in torch and JAX side by side and compare every step",
        description="Train the same model on the same seeded batches in PyTorch and in JAX and compare "
                    "loss, gradients, learning rate, optimizer state and parameters after every step. "
                    "With no arguments: the seed configuration on the embedded digits data.",
        formatter_class=_HelpFormatter,
    )
    _add_training_flags(run, defaults)
    run.add_argument("--mode", choices=MODES, default=defaults.mode,
                     help="resync: reset JAX from torch after each step; free: let both run on their own")
    run.add_argument("--localize", action=argparse.BooleanOptionalAction, default=None,
                     help="compare the models layer by layer on the first step whose loss or gradients diverge "
                          "(default: on when one does); --localize also shows step 0's layers when nothing "
                          "diverges, --no-localize turns it off")
    run.add_argument("--rounding-reference", action=argparse.BooleanOptionalAction,
                     default=defaults.rounding_reference,
                     help="float32: also run each step in float64 on a replica of the torch model to measure "
                          "torch's own gradient rounding, and let JAX differ by up to 4x that "
                          "(a gradient that cancels to nearly zero is judged at its rounding, not flagged)")
    clip = run.add_argument_group("gradient clipping (between backward() and step(), on both sides)")
    clip.add_argument("--clip-grad-norm", type=float, metavar="MAX", default=defaults.clip_grad_norm,
                      help="torch.nn.utils.clip_grad_norm_(model.parameters(), MAX): torch's formula, the +1e-6 "
                           "included; the total norm it returns is compared too")
    clip.add_argument("--norm-type", type=float, metavar="P", default=defaults.norm_type,
                      help="clip_grad_norm_'s norm_type: 2, inf, or any p > 0")
    clip.add_argument("--error-if-nonfinite", action="store_true",
                      help="clip_grad_norm_'s error_if_nonfinite: stop at a non-finite total norm")
    clip.add_argument("--clip-grad-value", type=float, metavar="V", default=defaults.clip_grad_value,
                      help="torch.nn.utils.clip_grad_value_(model.parameters(), V), after any norm clipping")
    run.add_argument("--accumulate", type=int, metavar="K", default=defaults.accumulate,
                     help="gradient accumulation: K batches of --batch-size per optimizer step, each loss divided "
                          "by K before backward() as the seed's loop does (--steps-per-epoch counts optimizer "
                          "steps)")
    run.add_argument("--accumulate-reduction", choices=("mean", "sum"), default=defaults.accumulate_reduction,
                     help="mean: backpropagate loss / K; sum: each loss undivided")
    amp = run.add_argument_group("mixed precision (torch.autocast on CPU and torch.amp.GradScaler; jax_impl.amp)")
    amp.add_argument("--amp", choices=("bfloat16", "float16"), default=defaults.amp,
                     help="run the forward pass and the loss under torch.autocast('cpu', dtype=...) with float32 "
                          "parameters, and with a GradScaler: scale the loss, unscale before clipping, skip a "
                          "step whose gradients hold an inf or NaN (the scheduler still steps)")
    amp.add_argument("--no-grad-scaler", dest="grad_scaler", action="store_false",
                     help="autocast without loss scaling (the usual bfloat16 setup)")
    amp.add_argument("--init-scale", type=float, metavar="S", default=defaults.init_scale,
                     help="GradScaler's init_scale")
    amp.add_argument("--growth-factor", type=float, metavar="F", default=defaults.growth_factor,
                     help="GradScaler's growth_factor")
    amp.add_argument("--backoff-factor", type=float, metavar="F", default=defaults.backoff_factor,
                     help="GradScaler's backoff_factor")
    amp.add_argument("--growth-interval", type=int, metavar="N", default=defaults.growth_interval,
                     help="GradScaler's growth_interval: steps without inf/NaN before the scale grows")
    run.add_argument("--forget-zero-grad", dest="zero_grad", action="store_false",
                     help="the seed's warning: both loops leave out optimizer.zero_grad(), so gradients add up "
                          "across steps (torch in p.grad, JAX in TrainState.grad_buffer); also runs the correct "
                          "loop and shows how far each framework departs from it")
    # checkpoints, resume (parity.checkpoints)
    run.add_argument("--checkpoint-dir", metavar="DIR",
                     help="write full checkpoints of both sides after every epoch (DIR/step-NNNNNN/: torch.pt, "
                          "jax.npz) and best-model checkpoints on validation loss (DIR/best_torch.pt, best_jax.npz)")
    run.add_argument("--checkpoint-every", type=int, metavar="N",
                     help="also write a full checkpoint every N optimizer steps within an epoch")
    run.add_argument("--resume", metavar="DIR",
                     help="continue from a full checkpoint directory; one holding only torch.pt (a PyTorch "
                          "checkpoint) starts the JAX side from torch's state")
    run.add_argument("--stats", action="store_true",
                     help="gradient statistics (norm, mean, max abs) per parameter every step and activation "
                          "statistics (mean, std) per module on each epoch's first step, both sides")
    run.add_argument("--tensorboard", metavar="DIR",
                     help="write TensorBoard event files of both sides to DIR/torch and DIR/jax: loss, lr, gradient "
                          "norms, and the JAX side's parity errors per stage (needs tensorboardX)")
    run.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    run.add_argument("--plot", metavar="PATH", help="write a PNG of losses and per-stage errors over steps")
    run.add_argument("--all-steps", action="store_true", help="print every step's row, not a sample")
    _styles_parser(commands, defaults)
    _add_bench(commands)
    return parser


def _add_training_flags(parser: argparse.ArgumentParser, defaults) -> None:
    """The flags that say what to train, shared by ``parity run`` and ``parity styles``."""
    from parity.spec import DTYPES, INTERVALS

    parser.add_argument("--model", default=defaults.model,
                        help="model name, e.g. SimpleNN or 'SimpleNN(hidden_size=128)'")
    parser.add_argument("--loss", default=defaults.loss, help="torch.nn loss spec")
    parser.add_argument("--optimizer", default=defaults.optimizer, help="torch.optim spec")
    parser.add_argument("--scheduler", default=defaults.scheduler,
                        help="torch.optim.lr_scheduler spec, or 'none'")
    parser.add_argument("--scheduler-interval", choices=INTERVALS, default=defaults.scheduler_interval,
                        help="call scheduler.step() after every epoch or after every optimizer step")
    parser.add_argument("--param-group", action="append", default=[], metavar="OPTIONS", dest="param_groups",
                        help="a torch parameter group, repeatable: its options as keyword arguments, params a "
                             "regular expression over parameter names, e.g. \"params='bias', weight_decay=0.0\"; "
                             "parameters no group selects keep the optimizer's own options")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs")
    parser.add_argument("--steps-per-epoch", type=int, default=defaults.steps_per_epoch,
                        help="batches per epoch (default: one full pass over the training split)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="samples per batch")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seeds torch's initialisation, the data split and the shuffling")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=defaults.dtype,
                        help="float64 separates semantic differences from rounding")
    parser.add_argument("--data", default=defaults.data,
                        help="'digits' (embedded), 'synthetic', or FILE.npz with arrays x, y [x_val, y_val]")


def _styles_parser(commands, defaults) -> None:
    """``parity styles``: the training flags of ``parity run`` (without --mode: styles run free)."""
    styles = commands.add_parser(
        "styles",
        help="the same training in torch eager, JAX functional (jit / no jit) and NNX stateful styles",
        description="Train the same seeded configuration in each training style (PyTorch eager; JAX functional "
                    "with and without jax.jit; Flax NNX nnx.Optimizer with nnx.jit, plain and with its graph "
                    "traversal cached), check every style's losses and parameters against PyTorch's, and show "
                    "time per step, first-call time, lines of step code and the state the user holds. "
                    "LBFGS and ReduceLROnPlateau are not supported here (parity run checks them).",
        formatter_class=_HelpFormatter,
    )
    _add_training_flags(styles, defaults)
    styles.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads for the torch style (default: torch's own)")
    styles.add_argument("--show-code", action="store_true", help="print each style's train step from the source")
    styles.add_argument("--json", metavar="PATH", help="write the styles report as JSON")


def _styles(args: argparse.Namespace) -> int:
    from rich.console import Console

    import parity
    from parity import styles as styles_module
    from parity.convert import ConversionError
    from parity.data import DataError

    _check_output("--json", args.json)
    scheduler = None if args.scheduler.strip().lower() in ("none", "") else args.scheduler
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    status = Console(stderr=True)
    try:
        spec = parity.RunSpec(
            model=args.model, loss=args.loss, optimizer=args.optimizer, scheduler=scheduler,
            scheduler_interval=args.scheduler_interval, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
            batch_size=args.batch_size, seed=args.seed, dtype=args.dtype, data=args.data,
            param_groups=tuple(args.param_groups), mode="free",
        )
        with status.status("training") as spinner:
            result = styles_module.run_styles(spec, progress=lambda name: spinner.update(f"training: {name}"),
                                              torch_threads=args.torch_threads)
    except (parity.SpecError, DataError, ConversionError) as error:
        raise BadInput(str(error)) from None
    styles_module.render(result, console, show_code=args.show_code)
    if args.json:
        styles_module.write_json(result, args.json)
        console.print(f"report written to {args.json}")
    return EXIT_PARITY if result.ok else EXIT_DIVERGENCE


def _add_bench(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="time one training step in torch eager/fused/compile and JAX jit/eager",
        description="Time the training step of each benchmark case in every mode, in interleaved rounds, "
                    "after checking that every mode's parameters equal torch eager's (same weights, same "
                    "batches). Also measures the machine's peak float32 matmul rate. OMP_WAIT_POLICY is set "
                    "to PASSIVE unless given (torch's spinning OpenMP threads and XLA's pool otherwise "
                    "starve each other on a small CPU).",
        formatter_class=_HelpFormatter,
    )
    bench.add_argument("--quick", action="store_true",
                       help="a smoke test under a minute: SimpleNN b64 SGD only, few steps, no torch.compile")
    bench.add_argument("--case", action="append", dest="cases", metavar="NAME",
                       help="a benchmark case, repeatable, e.g. 'CNN b64 SGD' (default: all five)")
    bench.add_argument("--modes", help="comma-separated modes (default: all; torch eager is required)")
    bench.add_argument("--rounds", type=int, help="interleaved rounds (default 10, quick 3)")
    bench.add_argument("--steps-per-round", type=int, help="timed steps per mode and round (default 10, quick 5)")
    bench.add_argument("--warmup", type=int, help="untimed steps after the first call (default 5, quick 2)")
    bench.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: torch's own)")
    bench.add_argument("--pool", action="store_true",
                       help="also time MaxPool2d's former reduce_window formulation against the tiled one")
    bench.add_argument("--json", metavar="PATH", help="write the results as JSON")
    bench.add_argument("--plot", metavar="PATH", help="write a PNG of bars per case and mode")


def _check_output(flag: str, value: str | None, suffix: str | None = None) -> None:
    if value is None:
        return
    if not value.strip():
        raise BadInput(f"{flag}: empty path")
    path = Path(value)
    if value.endswith(("/", os.sep)) or path.is_dir():
        raise BadInput(f"{flag} {value}: is a directory; give a file path")
    if path.exists() and not path.resolve().is_file():
        raise BadInput(f"{flag} {value}: exists and is not a regular file")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise BadInput(f"{flag} {value}: directory {path.parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise BadInput(f"{flag} {value}: directory {path.parent} is not writable")
    if suffix and path.suffix.lower() != suffix:
        raise BadInput(f"{flag} {value}: expected a {suffix} file name")


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    import parity
    from parity import report as reports
    from parity.convert import ConversionError
    from parity.data import DataError
    from jax_impl.checkpoint import CheckpointError

    _check_output("--json", args.json)
    _check_output("--plot", args.plot, ".png")
    if args.json and args.plot and Path(args.json).resolve() == Path(args.plot).resolve():
        raise BadInput(f"--json and --plot name the same file {args.json}")
    scheduler = None if args.scheduler.strip().lower() in ("none", "") else args.scheduler
    try:
        spec = parity.RunSpec(
            model=args.model, loss=args.loss, optimizer=args.optimizer, scheduler=scheduler,
            scheduler_interval=args.scheduler_interval, epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, seed=args.seed,
            dtype=args.dtype, mode=args.mode, data=args.data, param_groups=tuple(args.param_groups),
            localize=args.localize, rounding_reference=args.rounding_reference,
            clip_grad_norm=args.clip_grad_norm, norm_type=args.norm_type,
            error_if_nonfinite=args.error_if_nonfinite, clip_grad_value=args.clip_grad_value,
            accumulate=args.accumulate, accumulate_reduction=args.accumulate_reduction,
            checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every, resume=args.resume,
            stats=args.stats, tensorboard=args.tensorboard, amp=args.amp, grad_scaler=args.grad_scaler,
            init_scale=args.init_scale, growth_factor=args.growth_factor, backoff_factor=args.backoff_factor,
            growth_interval=args.growth_interval, zero_grad=args.zero_grad,
        )
        console = Console()
        if not console.is_terminal:  # a pipe or file: wide enough for the tables, no colour codes
            console = Console(width=120)
        result = _run_with_progress(spec)
    except (parity.SpecError, DataError, ConversionError, CheckpointError) as error:
        raise BadInput(str(error)) from None
    reports.render(result, console, all_steps=args.all_steps)
    if args.json:
        reports.write_json(result, args.json)
        console.print(f"report written to {args.json}")
    if args.plot:
        reports.write_plot(result, args.plot)
        console.print(f"plot written to {args.plot}")
    return EXIT_PARITY if result.ok else EXIT_DIVERGENCE


def _bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from parity import bench
    from parity.spec import SpecError

    _check_output("--json", args.json)
    _check_output("--plot", args.plot, ".png")
    if args.json and args.plot and Path(args.json).resolve() == Path(args.plot).resolve():
        raise BadInput(f"--json and --plot name the same file {args.json}")
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            raise BadInput(f"--torch-threads must be a positive integer, got {args.torch_threads}")
        import torch

        torch.set_num_threads(args.torch_threads)
    quick = {"rounds": 3, "steps_per_round": 5, "warmup": 2, "matmul_size": 1024} if args.quick else {}
    given = {key: getattr(args, key) for key in ("rounds", "steps_per_round", "warmup")
             if getattr(args, key) is not None}
    try:
        modes = bench.parse_modes(args.modes)
        if args.quick and not args.modes:
            modes = tuple(mode for mode in modes if mode != "torch.compile")
        config = bench.BenchConfig(cases=bench.parse_cases(args.cases, args.quick), modes=modes,
                                   **(quick | given))
    except SpecError as error:
        raise BadInput(str(error)) from None
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    status = Console(stderr=True)
    result = bench.run_bench(config, progress=(lambda text: status.print(text)) if status.is_terminal else None)
    pool = bench.pool_comparison(config.rounds, config.steps_per_round) if args.pool else None
    bench.render(result, console, pool)
    if args.json:
        bench.write_json(result, args.json, pool)
        console.print(f"results written to {args.json}")
    if args.plot:
        bench.write_plot(result, args.plot)
        console.print(f"plot written to {args.plot}")
    return EXIT_PARITY if all(row.parity_ok for row in result.results) else EXIT_DIVERGENCE


def _run_with_progress(spec):
    """``parity.run(spec)``, with a live progress bar on stderr when it is a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import parity

    status = Console(stderr=True)
    if not status.is_terminal:
        return parity.run(spec)
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=status, transient=True) as progress:
        task = progress.add_task("training both sides", total=None, note="")

        def advance(comparison, total: int) -> None:
            note = "[green]ok[/]" if comparison.ok else f"[red]step {comparison.step} differs[/]"
            progress.update(task, advance=1, total=total, note=f"loss {comparison.torch_loss:.5f} {note}")

        return parity.run(spec, progress=advance)


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["bench"] and "OMP_WAIT_POLICY" not in os.environ:
        # OpenMP reads it when torch loads (already done by importing parity): start afresh with it set
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, sys.argv[0], *sys.argv[1:]])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from parity.runner import versions

        print(" ".join(f"{name} {version}" for name, version in versions().items()))
        return EXIT_PARITY
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("parity: error: choose a command: run, styles or bench (see parity --help)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if args.command == "styles":
            return _styles(args)
        return _bench(args) if args.command == "bench" else _run(args)
    except BadInput as error:
        print(f"parity: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("parity: interrupted; no report written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
