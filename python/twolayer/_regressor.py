"""The estimator: scikit-learn's conventions over the native library.

Everything numeric runs in the native module (twolayer._native, the Rust
library through PyO3) without the GIL; this file validates inputs with
scikit-learn's own `validate_data`, translates MLPRegressor's parameter
names into the library's settings, keeps the fitted attributes, and
decides each epoch whether to stop (scikit-learn's `tol` and
`n_iter_no_change` rule, on the training loss or, with `early_stopping`,
on the held-out rows' R^2).
"""

import json
import numbers
import os
import warnings

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _native

#: numpy's type for the values of a run in each dtype (bf16 runs store f32
#: and convert to bf16 for the GEMMs).
_STORAGE = {"f64": np.float64, "f32": np.float32, "bf16": np.float32}


def _threads(asked):
    """The thread budget of a fit or a prediction: `asked`, else the cores
    this process may run on, within the limits OMP_NUM_THREADS and
    threadpoolctl (`threadpool_limits`) set, as read now."""
    if asked is not None:
        return int(asked)
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        n = min(n, int(env))
    try:
        from threadpoolctl import threadpool_info

        limits = [i["num_threads"] for i in threadpool_info() if i.get("num_threads")]
        if limits:
            n = min(n, min(limits))
    except Exception:  # threadpoolctl missing or a library it cannot read
        pass
    return max(1, min(n, _native.MAX_THREADS))


class Regressor(RegressorMixin, BaseEstimator):
    """A two-layer network trained by minibatch SGD: Linear -> ReLU -> Linear
    with biases, the squared error, plain SGD (no momentum, no L2 penalty).

    The same model and optimiser as ``MLPRegressor(hidden_layer_sizes=(H,),
    solver="sgd", momentum=0, alpha=0, learning_rate="constant")``: the
    parameter names mean what they mean there, so a user of that estimator
    swaps the class and keeps the rest. There is no ``solver``,
    ``momentum`` or ``alpha``: twolayer runs plain SGD.

    Defaults are twolayer's for a dataset (``twolayer train --data``), not
    MLPRegressor's Adam defaults: batches of 32 rows, 20 epochs, a rate of
    0.01 on the mean squared error (``learning_rate_init=None``), weights
    and biases drawn as PyTorch's ``nn.Linear`` draws them.

    Parameters
    ----------
    hidden_layer_sizes : int or tuple of one int, default=(100,)
        H, the hidden layer's width (one hidden layer).
    learning_rate_init : float or None, default=None
        The SGD step on scikit-learn's loss, sum ||y - y_pred||^2 / (2 n)
        over a batch of n rows: twolayer's mean-loss rate times 2 / D_out.
        None: twolayer's default, 0.01 on the mean loss.
    batch_size : int, default=32
        Rows per minibatch, clipped to the training rows.
    max_iter : int, default=20
        Epochs (passes over the training rows) at most.
    random_state : int, RandomState or None, default=None
        The seed of the initial weights, the shuffles and the held-out
        rows; an int is the command line's ``--seed``.
    tol : float, default=1e-4
        The improvement of the training loss (or, with early stopping, of
        the validation R^2) that counts as progress.
    n_iter_no_change : int, default=10
        Training stops after more than this many epochs without progress.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows, score R^2 on them
        after every epoch, stop on no progress, and keep the best epoch's
        weights.
    validation_fraction : float, default=0.1
        The share of rows held out when early stopping.
    verbose : bool, default=False
        Print a line per epoch, as MLPRegressor does.
    dtype : {"f64", "f32", "bf16"}, default="f64"
        The values' type: bf16 runs the GEMMs on bf16 operands with f32
        results (where the library has a bf16 GEMM).
    loss : {"mean", "sum"}, default="mean"
        The loss twolayer minimises (the mean or the sum of squared errors
        over the batch); ``learning_rate_init`` is converted for either.
    threads : int or None, default=None
        Threads for training and prediction; None: the cores available,
        within OMP_NUM_THREADS and threadpoolctl's limits when fit starts.
    warm_start : bool, default=False
        Start a fit from the weights the estimator holds (a previous fit's,
        or ``load``'s) instead of drawing new ones, when their shape fits
        the data; the shuffles still come from ``random_state``. (The
        command line's ``--weights``.)
    form : {"auto", "primal"}, default="auto"
        How the step computes x.w1: on minibatches always the primal form
        (the dual form is for one fixed batch, the command line's
        ``twolayer train`` without data).

    Attributes
    ----------
    coefs_ : list of two arrays, (D_in, H) and (H, D_out)
    intercepts_ : list of two arrays, (H,) and (D_out,)
    loss_curve_ : list of float
        Per epoch, the mean over its batches of the squared error averaged
        over rows and outputs and halved (scikit-learn's loss).
    loss_ : float
        The last epoch's.
    best_loss_ : float or None
        The lowest of loss_curve_ (None when early stopping).
    validation_scores_ : list of float or None
        Per epoch, R^2 on the held-out rows (early stopping only).
    best_validation_score_ : float or None
    n_iter_ : int
        Epochs run.
    t_ : int
        Training rows seen (rows of every step run).
    n_features_in_ : int
    n_outputs_ : int
    plan_ : str
        How the library divided each step (shards, threads, blocks).
    fit_step_ms_ : float
        The training loop's milliseconds per step (the command line's
        ``ms_per_step``).
    """

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        learning_rate_init=None,
        batch_size=32,
        max_iter=20,
        random_state=None,
        tol=1e-4,
        n_iter_no_change=10,
        early_stopping=False,
        validation_fraction=0.1,
        verbose=False,
        dtype="f64",
        loss="mean",
        threads=None,
        form="auto",
        warm_start=False,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.learning_rate_init = learning_rate_init
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.random_state = random_state
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.verbose = verbose
        self.dtype = dtype
        self.loss = loss
        self.threads = threads
        self.form = form
        self.warm_start = warm_start

    # -- parameters -----------------------------------------------------

    def _hidden(self):
        h = self.hidden_layer_sizes
        if isinstance(h, numbers.Integral):
            h = (h,)
        h = tuple(h)
        if len(h) != 1 or not isinstance(h[0], numbers.Integral) or h[0] < 1:
            raise ValueError(
                f"hidden_layer_sizes must be one positive int (one hidden layer), got {self.hidden_layer_sizes!r}"
            )
        return int(h[0])

    def _check_params(self):
        if self.dtype not in _STORAGE:
            raise ValueError(f"unknown dtype {self.dtype!r} (f64, f32 or bf16)")
        if self.loss not in ("mean", "sum"):
            raise ValueError(f"unknown loss {self.loss!r} (mean or sum)")
        if self.form not in ("auto", "primal"):
            raise ValueError(
                f"form {self.form!r}: minibatch training runs the primal form (auto or primal); "
                "the dual form trains one fixed batch (the command line's twolayer train)"
            )
        for name in ("batch_size", "max_iter", "n_iter_no_change"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        lr = self.learning_rate_init
        if lr is not None and not (isinstance(lr, numbers.Real) and np.isfinite(lr) and lr > 0):
            raise ValueError(f"learning_rate_init must be a positive number or None, got {lr!r}")
        if self.early_stopping and not (0 < self.validation_fraction < 1):
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )
        if self.threads is not None and not (
            isinstance(self.threads, numbers.Integral) and 1 <= self.threads <= _native.MAX_THREADS
        ):
            raise ValueError(
                f"threads must be between 1 and {_native.MAX_THREADS}, got {self.threads!r}"
            )

    def _seed(self):
        if isinstance(self.random_state, numbers.Integral) and self.random_state >= 0:
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    # -- fit ------------------------------------------------------------

    def fit(self, X, y):
        """Trains on X (n_samples, n_features) and y (n_samples,) or
        (n_samples, n_outputs); returns self."""
        self._check_params()
        hidden = self._hidden()
        storage = _STORAGE[self.dtype]
        X, y = validate_data(
            self, X, y, multi_output=True, y_numeric=True, dtype=storage, order="C"
        )
        y2 = np.ascontiguousarray(y.reshape(len(y), -1), dtype=storage)
        n, d_out = y2.shape
        seed = self._seed()
        val_fraction = float(self.validation_fraction) if self.early_stopping else None
        val_rows = _native.held_out_rows(n, 1, seed, val_fraction) if val_fraction else None
        n_val = 0 if val_rows is None else len(val_rows)
        if n - n_val < 1:
            raise ValueError(
                f"{n} sample(s) leave no training rows once {n_val} are held out for validation"
            )
        batch = int(min(self.batch_size, n - n_val))
        if self.learning_rate_init is None:
            lr = _native.DEFAULT_LR if self.loss == "mean" else _native.DEFAULT_LR / (batch * d_out)
        elif self.loss == "mean":
            lr = self.learning_rate_init * d_out / 2.0
        else:
            lr = self.learning_rate_init / (2.0 * batch)
        # What one epoch's train_loss (the library's loss) is on
        # scikit-learn's scale: the squared error averaged over rows and
        # outputs, halved.
        to_sklearn = 0.5 if self.loss == "mean" else 0.5 / (batch * d_out)
        threads = _threads(self.threads)
        if val_rows is not None:
            X_val, y_val = X[val_rows], y2[val_rows]

        curve, scores = [], []
        state = {"best_loss": np.inf, "best_score": -np.inf, "count": 0, "best": None, "converged": False}

        def on_epoch(epoch, train_loss, _val_mse, weights):
            loss = train_loss * to_sklearn
            curve.append(loss)
            if self.early_stopping:
                w1, b1, w2, b2 = weights
                pred = _native.predict(X_val, w1, b1, w2, b2, batch=batch, threads=threads)
                score = r2_score(y_val, pred)
                scores.append(score)
                state["count"] = state["count"] + 1 if score < state["best_score"] + self.tol else 0
                if score > state["best_score"]:
                    state["best_score"], state["best"] = score, weights
            else:
                state["count"] = state["count"] + 1 if loss > state["best_loss"] - self.tol else 0
                state["best_loss"] = min(state["best_loss"], loss)
            if self.verbose:
                print(f"Iteration {epoch}, loss = {loss:.8f}")
                if self.early_stopping:
                    print(f"Validation score: {scores[-1]:f}")
            if state["count"] > self.n_iter_no_change:
                state["converged"] = True
                if self.verbose:
                    what = "Validation score" if self.early_stopping else "Training loss"
                    print(
                        f"{what} did not improve more than tol={self.tol:f} for "
                        f"{self.n_iter_no_change} consecutive epochs. Stopping."
                    )
                return True
            return False

        start = None
        if self.warm_start and hasattr(self, "coefs_"):
            w1, w2 = self.coefs_
            b1, b2 = self.intercepts_
            if w1.shape == (X.shape[1], hidden) and w2.shape == (hidden, d_out):
                start = tuple(np.ascontiguousarray(a, dtype=storage) for a in (w1, b1, w2, b2))
        out = _native.fit(
            X,
            y2,
            hidden=hidden,
            lr=lr,
            batch=batch,
            epochs=int(self.max_iter),
            seed=seed,
            val_fraction=val_fraction,
            biases=True,
            dtype=self.dtype,
            threads=threads,
            loss=self.loss,
            start=start,
            on_epoch=on_epoch,
        )
        # Only now, when the run has finished: an interrupted or failed fit
        # leaves the estimator as it was.
        w1, b1, w2, b2 = state["best"] if self.early_stopping else out["weights"]
        self.coefs_ = [w1, w2]
        self.intercepts_ = [b1, b2]
        self.loss_curve_ = curve
        self.loss_ = curve[-1]
        self.best_loss_ = None if self.early_stopping else float(min(curve))
        self.validation_scores_ = scores if self.early_stopping else None
        self.best_validation_score_ = float(state["best_score"]) if self.early_stopping else None
        self.n_iter_ = len(curve)
        self.t_ = self.n_iter_ * ((n - n_val) // batch) * batch
        self.n_outputs_ = d_out
        self.plan_ = out["plan"]
        self.fit_step_ms_ = out["step_ms"]
        self._threads = threads
        if not state["converged"] and self.n_iter_ == self.max_iter:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                "optimization hasn't converged yet.",
                ConvergenceWarning,
            )
        return self

    # -- predict --------------------------------------------------------

    def predict(self, X):
        """y_pred for X: (n_samples,) for one output, else
        (n_samples, n_outputs)."""
        check_is_fitted(self)
        w1, w2 = self.coefs_
        b1, b2 = self.intercepts_
        X = validate_data(self, X, reset=False, dtype=w1.dtype.type, order="C")
        threads = _threads(self.threads)
        batch = int(min(max(len(X), 1), 4096))
        y = _native.predict(X, w1, b1, w2, b2, batch=batch, threads=threads)
        return y.ravel() if y.shape[1] == 1 else y

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    # -- files ----------------------------------------------------------

    def save(self, path):
        """Writes the weights as the command-line tool's .npz (w1, b1, w2,
        b2): `twolayer predict --weights PATH` and `twolayer train
        --weights PATH` read it."""
        check_is_fitted(self)
        w1, w2 = self.coefs_
        b1, b2 = self.intercepts_
        _native.save_weights(os.fspath(path), w1, b1, w2, b2)


def load(path, **params):
    """A fitted Regressor from weights the command-line tool wrote (or
    `Regressor.save`); `params` set the estimator's other parameters."""
    w1, b1, w2, b2 = _native.load_weights(os.fspath(path))
    dtype = "f32" if w1.dtype == np.float32 else "f64"
    r = Regressor(hidden_layer_sizes=(w1.shape[1],), dtype=params.pop("dtype", dtype), **params)
    if b1 is None:
        b1 = np.zeros(w1.shape[1], dtype=w1.dtype)
        b2 = np.zeros(w2.shape[1], dtype=w1.dtype)
    r.coefs_ = [w1, w2]
    r.intercepts_ = [b1, b2]
    r.n_features_in_ = w1.shape[0]
    r.n_outputs_ = w2.shape[1]
    return r


def bench(n, d_in, hidden, d_out, dtype="f64", threads=None):
    """Measures one point (N, D_in, H, D_out, dtype, threads) as `twolayer
    sweep` does and returns its report as a dict: the fields of the
    command line's report.json (docs/report-schema.json), with the one
    point under "points"."""
    if dtype not in _STORAGE:
        raise ValueError(f"unknown dtype {dtype!r} (f64, f32 or bf16)")
    text = _native.bench(
        n=int(n), d_in=int(d_in), hidden=int(hidden), d_out=int(d_out), dtype=dtype, threads=_threads(threads)
    )
    return json.loads(text)
