"""twolayer.Regressor: scikit-learn's estimator checks, parity with the
command-line tool, the GIL, Ctrl-C, forks, files and bad input."""

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from conftest import teacher
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import twolayer
from twolayer import _native

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def test_every_estimator_check_passes():
    # scikit-learn's own checks, all of them: none expected to fail, none
    # skipped (conftest sets SCIPY_ARRAY_API so the array-API one runs).
    results = check_estimator(twolayer.Regressor(), on_fail=None)
    assert len(results) >= 50
    bad = [(r["check_name"], r["status"], repr(r["exception"])) for r in results if r["status"] != "passed"]
    assert bad == []


def test_fit_gives_the_command_lines_weights(tmp_path, twolayer_bin):
    # The same data, seed and settings: the same weights, bit for bit (the
    # same library calls on the same threads).
    for dtype, npdt in (("f64", np.float64), ("f32", np.float32)):
        x, y = teacher(300, 7, 2, seed=5, dtype=npdt)
        data = tmp_path / f"d-{dtype}.npz"
        np.savez(data, x=x, y=y)
        saved = tmp_path / f"w-{dtype}.npz"
        subprocess.run(
            [str(twolayer_bin), "train", "--data", str(data), "--seed", "11", "--epochs", "4",
             "--batch", "16", "--hidden", "9", "--threads", "2", "--no-wisdom", "--save", str(saved), "-q"],
            check=True,
        )
        r = twolayer.Regressor(
            hidden_layer_sizes=9, batch_size=16, max_iter=4, random_state=11, threads=2,
            n_iter_no_change=100, dtype=dtype,
        ).fit(x, y)
        cli = np.load(saved)
        for got, name in zip(r.coefs_ + r.intercepts_, ["w1", "w2", "b1", "b2"]):
            assert got.dtype == npdt
            np.testing.assert_array_equal(got, cli[name], err_msg=f"{dtype} {name}")
        assert r.n_iter_ == 4 and len(r.loss_curve_) == 4
        # and `predict` is the tool's `predict` on those weights
        np.save(tmp_path / "x.npy", x)
        subprocess.run(
            [str(twolayer_bin), "predict", "--weights", str(saved), "--x", str(tmp_path / "x.npy"),
             "--out", str(tmp_path / "p.npy"), "--threads", "2", "-q"],
            check=True,
        )
        np.testing.assert_allclose(r.predict(x), np.load(tmp_path / "p.npy"), rtol=1e-5 if dtype == "f32" else 1e-12)


def test_learning_rate_init_is_scikit_learns_step():
    # learning_rate_init on sum ||y - y_pred||^2 / (2n) is twolayer's mean-loss
    # rate x 2 / D_out: the default (0.01 on the mean loss) at D_out = 2 is
    # learning_rate_init = 0.01, the same run.
    x, y = teacher(200, 5, 2, seed=1)
    a = twolayer.Regressor(hidden_layer_sizes=8, max_iter=3, random_state=0, threads=1).fit(x, y)
    b = twolayer.Regressor(hidden_layer_sizes=8, max_iter=3, random_state=0, threads=1, learning_rate_init=0.01).fit(x, y)
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(p, q)
    # loss_curve_ is scikit-learn's loss: half the mean squared error.
    pred_loss = 0.5 * np.mean((b.predict(x) - y) ** 2)
    assert 0.5 * pred_loss < b.loss_curve_[-1] < 2.0 * pred_loss + 1e-3


def test_early_stopping_keeps_the_best_epoch():
    x, y = teacher(600, 6, 1, seed=2)
    y = y.ravel()
    r = twolayer.Regressor(
        hidden_layer_sizes=16, max_iter=30, early_stopping=True, validation_fraction=0.2,
        n_iter_no_change=3, random_state=4, threads=1,
    ).fit(x, y)
    assert r.best_loss_ is None
    assert len(r.validation_scores_) == r.n_iter_ == len(r.loss_curve_)
    assert r.best_validation_score_ == max(r.validation_scores_)
    # The weights kept are the best epoch's: their R^2 on the held-out rows
    # is the best score.
    held = _native.held_out_rows(len(x), 1, 4, 0.2)
    assert len(held) == 120
    assert r.score(x[held], y[held]) == pytest.approx(r.best_validation_score_, abs=1e-12)


def test_pipelines_cross_validation_and_grid_search():
    x, y = teacher(240, 4, 1, seed=3)
    y = y.ravel()
    pipe = make_pipeline(StandardScaler(), twolayer.Regressor(hidden_layer_sizes=12, max_iter=15, random_state=0))
    scores = cross_val_score(pipe, x, y, cv=3)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    g = GridSearchCV(twolayer.Regressor(max_iter=5, random_state=0), {"hidden_layer_sizes": [4, 8]}, cv=2).fit(x, y)
    assert g.best_params_["hidden_layer_sizes"] in (4, 8)


def test_the_gil_is_released_while_training():
    # Epoch 1's callback wakes the main thread and returns; epoch 2 is long.
    # Only a run without the GIL lets the main thread run during it: the
    # callback of epoch 2 must see what the main thread did meanwhile.
    x, y = teacher(40_000, 64, 4, seed=6)
    started, main_ran = threading.Event(), threading.Event()
    seen = []

    def on_epoch(epoch, *_):
        if epoch == 1:
            started.set()
        if epoch == 2:
            seen.append(main_ran.is_set())
        return epoch >= 2

    t = threading.Thread(
        target=_native.fit,
        args=(x, y),
        kwargs=dict(hidden=64, lr=0.01, batch=32, epochs=5, seed=0, val_fraction=None, biases=True,
                    dtype="f64", threads=1, loss="mean", on_epoch=on_epoch),
    )
    t.start()
    assert started.wait(120)
    main_ran.set()
    t.join()
    assert seen == [True]


def test_ctrl_c_raises_and_leaves_the_last_fit(tmp_path):
    x, y = teacher(5000, 16, 1, seed=7)
    r = twolayer.Regressor(hidden_layer_sizes=8, max_iter=2, random_state=0, threads=1).fit(x, y)
    before = [w.copy() for w in r.coefs_]
    epochs = []

    # The signal arrives while the native loop runs (sent 0.2 s after the
    # first epoch ended, in a run of 100,000 epochs): the loop's poll turns
    # it into KeyboardInterrupt.
    def on_epoch(epoch, *_):
        epochs.append(epoch)
        if epoch == 1:
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        return False

    with pytest.raises(KeyboardInterrupt):
        _native.fit(x, y, hidden=8, lr=0.01, batch=32, epochs=100_000, seed=0, val_fraction=None,
                    biases=True, dtype="f64", threads=1, loss="mean", on_epoch=on_epoch)
    assert 1 <= len(epochs) < 100_000
    # Through the estimator: the exception, and the fitted state untouched.
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        r.set_params(max_iter=100_000, n_iter_no_change=100_000).fit(x, y)
    for a, b in zip(before, r.coefs_):
        np.testing.assert_array_equal(a, b)
    assert r.n_iter_ == 2


def _fit_in_child(q):
    x, y = teacher(300, 5, 1, seed=8)
    r = twolayer.Regressor(hidden_layer_sizes=8, max_iter=3, random_state=0, threads=2).fit(x, y.ravel())
    q.put(float(r.score(x, y.ravel())))


def test_a_forked_child_trains():
    # The parent trains (OpenBLAS's and the pool's threads started), then
    # forks: the child must train too, not hang on the parent's threads.
    x, y = teacher(300, 5, 1, seed=8)
    twolayer.Regressor(hidden_layer_sizes=8, max_iter=3, random_state=0, threads=2).fit(x, y.ravel())
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_fit_in_child, args=(q,))
    p.start()
    p.join(300)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive, "the forked child hung"
    assert p.exitcode == 0
    assert np.isfinite(q.get(timeout=10))


def test_threads_follow_threadpoolctl_and_omp_num_threads(monkeypatch):
    from threadpoolctl import threadpool_limits

    from twolayer._regressor import _threads

    x, y = teacher(100, 3, 1, seed=9)
    with threadpool_limits(limits=1):
        r = twolayer.Regressor(hidden_layer_sizes=4, max_iter=1).fit(x, y.ravel())
        assert r._threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _threads(None) == 1
    assert _threads(3) == 3


def test_pickles_saves_and_loads(tmp_path):
    x, y = teacher(200, 5, 3, seed=10)
    r = twolayer.Regressor(hidden_layer_sizes=6, max_iter=3, random_state=1).fit(x, y)
    back = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(back.predict(x), r.predict(x))
    r.save(tmp_path / "w.npz")
    loaded = twolayer.load(tmp_path / "w.npz")
    np.testing.assert_array_equal(loaded.predict(x), r.predict(x))
    assert loaded.n_features_in_ == 5 and loaded.hidden_layer_sizes == (6,)


def test_bad_input_is_a_value_error_with_one_line(tmp_path):
    x, y = teacher(50, 3, 1, seed=11)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        twolayer.Regressor().fit(bad, y)
    for params, text in [
        ({"dtype": "f16"}, "unknown dtype"),
        ({"loss": "huber"}, "unknown loss"),
        ({"hidden_layer_sizes": (10, 10)}, "one hidden layer"),
        ({"form": "dual"}, "fixed batch"),
        ({"batch_size": 0}, "batch_size"),
        ({"threads": 0}, "threads"),
        ({"learning_rate_init": -1.0}, "learning_rate_init"),
    ]:
        with pytest.raises(ValueError, match=text):
            twolayer.Regressor(**params).fit(x, y)
    with pytest.raises(ValueError, match="features"):
        twolayer.Regressor(max_iter=1).fit(x, y).predict(x[:, :2])
    with pytest.raises(NotFittedError):
        twolayer.Regressor().predict(x)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError) as e:
        twolayer.load(tmp_path / "junk.npz")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown dtype"):
        twolayer.bench(8, 4, 4, 2, dtype="f16")


def test_every_dtype_trains():
    x, y = teacher(2000, 8, 1, seed=12)
    y = y.ravel()
    scores = {}
    for dtype in ("f64", "f32", "bf16"):
        r = twolayer.Regressor(hidden_layer_sizes=32, max_iter=10, random_state=0, dtype=dtype)
        try:
            r.fit(x, y)
        except ValueError as e:
            # A library without a bf16 GEMM refuses bf16 by name, nothing else.
            assert dtype == "bf16" and "sbgemm" in str(e), e
            continue
        assert r.coefs_[0].dtype == (np.float64 if dtype == "f64" else np.float32)
        scores[dtype] = r.score(x, y)
    assert scores["f64"] > 0.5
    assert abs(scores["f32"] - scores["f64"]) < 1e-3
    if "bf16" in scores:
        assert abs(scores["bf16"] - scores["f64"]) < 0.05


def test_verbose_prints_an_epoch_line(capsys):
    x, y = teacher(100, 3, 1, seed=13)
    twolayer.Regressor(hidden_layer_sizes=4, max_iter=2, verbose=True).fit(x, y.ravel())
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Iteration 1, loss = ") and out[1].startswith("Iteration 2, loss = ")


def test_max_iter_without_convergence_warns():
    x, y = teacher(100, 3, 1, seed=14)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always", ConvergenceWarning)
        twolayer.Regressor(hidden_layer_sizes=4, max_iter=2).fit(x, y.ravel())
    assert any(issubclass(i.category, ConvergenceWarning) for i in w)


def test_bench_returns_the_reports_fields():
    report = twolayer.bench(64, 100, 16, 4, dtype="f64", threads=1)
    assert report["schema_version"] >= 1
    (p,) = report["points"]
    assert (p["n"], p["d_in"], p["hidden"], p["d_out"], p["dtype"]) == (64, 100, 16, 4, "f64")
    assert p["ms_per_step"]["median"] > 0


def test_a_memory_map_trains_in_place_as_the_array_does(tmp_path):
    # np.memmap data is read where it is (the library borrows numpy's
    # memory, it copies no X): the same weights as the array in memory.
    x, y = teacher(400, 6, 1, seed=15)
    mx = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=x.shape)
    mx[:] = x
    mx.flush()
    ro = np.load(tmp_path / "x.npy", mmap_mode="r")
    a = twolayer.Regressor(hidden_layer_sizes=8, max_iter=3, random_state=2, threads=1).fit(ro, y.ravel())
    b = twolayer.Regressor(hidden_layer_sizes=8, max_iter=3, random_state=2, threads=1).fit(x, y.ravel())
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(p, q)


def test_openblas_idle_workers_spin_briefly_as_in_the_command_line():
    # Set before the native module loaded OpenBLAS, to the command line's
    # value, unless the environment chose one.
    import twolayer as t

    assert t._SHORT_SPIN == _native.SHORT_SPIN
    code = "import os, twolayer; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _native.SHORT_SPIN
    env["OPENBLAS_THREAD_TIMEOUT"] = "9"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "9"


def test_warm_start_goes_on_as_the_command_lines_weights_flag(tmp_path, twolayer_bin):
    # A fit from the estimator's weights (warm_start, or load's) is the
    # command line's `--weights` run: the same weights after, bit for bit.
    x, y = teacher(300, 7, 2, seed=16)
    data, w0, w1 = tmp_path / "d.npz", tmp_path / "w0.npz", tmp_path / "w1.npz"
    np.savez(data, x=x, y=y)
    r = twolayer.Regressor(hidden_layer_sizes=9, batch_size=16, max_iter=2, random_state=3, threads=2,
                           n_iter_no_change=100).fit(x, y)
    r.save(w0)
    subprocess.run(
        [str(twolayer_bin), "train", "--data", str(data), "--weights", str(w0), "--seed", "4", "--epochs", "3",
         "--batch", "16", "--threads", "2", "--no-wisdom", "--save", str(w1), "-q"],
        check=True,
    )
    cli = np.load(w1)
    warm = twolayer.load(w0, warm_start=True, batch_size=16, max_iter=3, random_state=4, threads=2,
                         n_iter_no_change=100).fit(x, y)
    r.set_params(warm_start=True, random_state=4, max_iter=3).fit(x, y)
    for got, name in zip(r.coefs_ + r.intercepts_, ["w1", "w2", "b1", "b2"]):
        np.testing.assert_array_equal(got, cli[name], err_msg=name)
    for got, name in zip(warm.coefs_ + warm.intercepts_, ["w1", "w2", "b1", "b2"]):
        np.testing.assert_array_equal(got, cli[name], err_msg=name)
    # Without warm_start the same settings draw new weights: another run.
    cold = twolayer.Regressor(hidden_layer_sizes=9, batch_size=16, max_iter=3, random_state=4, threads=2,
                              n_iter_no_change=100).fit(x, y)
    assert not np.array_equal(cold.coefs_[0], cli["w1"])
