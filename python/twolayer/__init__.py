"""twolayer: a two-layer network (Linear -> ReLU -> Linear, squared error,
minibatch SGD) trained through OpenBLAS GEMM, as a scikit-learn regressor.

    >>> import twolayer
    >>> model = twolayer.Regressor(max_iter=20).fit(X, y)
    >>> model.predict(X_new)

`Regressor` follows scikit-learn's conventions (fit/predict/score,
get_params/set_params, MLPRegressor's names for what means the same);
`bench` measures one sweep point as `twolayer sweep` does; `load` reads
weights the command-line tool wrote.
"""

import os as _os

# OpenBLAS reads how long its idle workers spin only when it loads, which
# is when the native module does, just below: as the command line does
# (crates/twolayer/src/blas.rs, `reexec_with_short_spin`), idle workers
# spin briefly unless the user chose otherwise, so that they do not hold a
# core the step's other work needs (7-9% of a fit's time at batch 32 on 2
# cores). The same value as the command line's (a test checks).
_SHORT_SPIN = "4"
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", _SHORT_SPIN)

from ._regressor import Regressor, bench, load  # noqa: E402

__all__ = ["Regressor", "bench", "load"]
__version__ = "0.1.0"
