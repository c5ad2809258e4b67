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

from ._regressor import Regressor, bench, load

__all__ = ["Regressor", "bench", "load"]
__version__ = "0.1.0"
