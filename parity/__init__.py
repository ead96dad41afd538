"""The torch -> JAX training parity harness.

    import parity
    report = parity.run(parity.RunSpec(optimizer="Adam(lr=1e-3)", dtype="float64"))
    print(report.ok, report.first_divergence)

Importing ``parity`` enables ``jax_enable_x64`` so that float64 runs are possible; every
array the harness creates has an explicit dtype, so float32 runs stay float32.
"""

import jax

jax.config.update("jax_enable_x64", True)

from parity.compare import TOLERANCES, Tolerance  # noqa: E402
from parity.convert import ConversionError, Converter  # noqa: E402
from parity.runner import ParityReport, check_port, run  # noqa: E402
from parity.spec import RunSpec, SpecError  # noqa: E402

__all__ = ["run", "check_port", "RunSpec", "ParityReport", "Converter", "ConversionError",
           "SpecError", "TOLERANCES", "Tolerance"]
