"""Multivariate detectors: hand-checked statistics, calibrated limits, faults and contributions,
and one contract check over every detector of `analytics.multivariate`."""

import pickle

import numpy as np
import polars as pl
import pytest

import analytics.multivariate as mv
from analytics.multivariate import (
    DynamicPCADetector,
    IsolationForestDetector,
    MultivariateDetector,
    NearestNeighbourDetector,
    PCADetector,
    QuantileThreshold,
    ewma,
    held_out_scores,
    persist,
    rolling_median,
    spe_limit_jackson_mudholkar,
    t2_limit_f,
)
from analytics.multivariate.dpca import lagged

COLUMNS = [f"x{i}" for i in range(6)]
FACTORIES = {
    "pca": lambda: PCADetector(variance=0.9, alpha=0.01),
    "pca_sum": lambda: PCADetector(variance=0.9, alpha=0.01, combine="sum"),
    "pca_textbook": lambda: PCADetector(limits="textbook"),
    "dpca": lambda: DynamicPCADetector(lags=2),
    "iforest": lambda: IsolationForestDetector(n_estimators=50, random_state=3),
    "knn": lambda: NearestNeighbourDetector(n_neighbors=5),
}


def normal_rows(n: int, seed: int) -> pl.DataFrame:
    """Correlated Gaussian rows: 6 variables driven by 2 latent factors plus noise."""
    rng = np.random.default_rng(seed)
    loadings = np.array([[1.0, 0.8, 0.6, 0.0, 0.2, 0.5], [0.0, 0.3, 0.7, 1.0, 0.9, 0.4]])
    X = rng.normal(size=(n, 2)) @ loadings + 0.3 * rng.normal(size=(n, 6)) + np.arange(6) * 10
    return pl.DataFrame(X, schema=COLUMNS, orient="row")


@pytest.fixture(scope="module")
def train() -> pl.DataFrame:
    return normal_rows(3000, seed=1)


def test_every_multivariate_detector_is_checked():
    classes = {obj for obj in vars(mv).values() if isinstance(obj, type) and obj is not MultivariateDetector
               and callable(getattr(obj, "score_samples", None))}
    assert {type(f()) for f in FACTORIES.values()} == classes


def learned(det) -> bytes:
    return pickle.dumps({k: v for k, v in vars(det).items() if k.endswith("_") and not k.startswith("_")})


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_multivariate_contract(name: str, train: pl.DataFrame):
    det = FACTORIES[name]()
    assert isinstance(det, MultivariateDetector)
    assert det.fit(train) is det
    state = learned(det)
    test = normal_rows(300, seed=2)
    scores = det.score_samples(test)
    contrib = det.contributions(test)
    assert scores.shape == (300,) and scores.dtype == np.float64 and np.isfinite(scores).all()
    assert contrib.columns == COLUMNS and contrib.height == 300
    assert all(dt == pl.Float64 for dt in contrib.dtypes) and (contrib.to_numpy() >= 0).all()
    assert learned(det) == state  # scoring learns nothing
    # Higher = more anomalous: a gross outlier (every variable far off) outscores every normal row.
    outlier = test[:1].with_columns(pl.all() + 50.0)
    assert det.score_samples(outlier)[0] > scores.max()
    # Deterministic: a second fit gives the same scores; a pickled copy scores the same.
    assert np.array_equal(FACTORIES[name]().fit(train).score_samples(test), scores)
    clone = pickle.loads(pickle.dumps(det))
    assert np.array_equal(clone.score_samples(test), scores)
    # Columns are matched by name; other variables are refused.
    assert np.allclose(det.score_samples(test.select(COLUMNS[::-1])), scores)
    with pytest.raises(ValueError, match="missing"):
        det.score_samples(test.drop("x1"))
    with pytest.raises(ValueError, match="NaN"):
        det.score_samples(test.with_columns(pl.lit(float("nan")).alias("x0")))
    assert det.score_samples(test[:0]).shape == (0,) and det.contributions(test[:0]).height == 0


def test_pca_statistics_match_the_direct_formula():
    X = np.array([[1.0, 2.0, 0.5], [2.0, 4.1, 1.0], [3.0, 6.2, 0.0], [4.0, 7.9, 1.5], [5.0, 10.1, 0.7],
                  [6.0, 12.0, 0.2], [7.0, 13.8, 1.1], [8.0, 16.1, 0.9], [9.0, 18.0, 0.4], [10.0, 20.2, 1.3],
                  [11.0, 21.9, 0.6], [12.0, 24.0, 0.8]])
    frame = pl.DataFrame(X, schema=["a", "b", "c"], orient="row")
    det = PCADetector(variance=0.6, limits="textbook").fit(frame)
    # By hand: autoscale, eigen-decompose the correlation matrix, keep the top component.
    lam, V = np.linalg.eigh(np.corrcoef(X, rowvar=False))
    lam, V = lam[::-1], V[:, ::-1]
    k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), 0.6) + 1)
    assert det.n_components_ == k == 1
    P = V[:, :k]
    new = np.array([[3.0, 5.0, 2.0], [6.5, 13.0, 0.7]])
    Zn = (new - X.mean(0)) / X.std(0, ddof=1)
    t = Zn @ P
    t2 = (t**2 / lam[:k]).sum(1)
    spe = ((Zn - t @ P.T) ** 2).sum(1)
    got_t2, got_spe = det.statistics(pl.DataFrame(new, schema=["a", "b", "c"], orient="row"))
    assert np.allclose(got_t2, t2) and np.allclose(got_spe, spe)
    assert np.isclose(det.t2_limit_, t2_limit_f(12, 1, 0.01))
    assert np.isclose(det.spe_limit_, spe_limit_jackson_mudholkar(lam[k:], 0.01))
    # Contributions: the T² and SPE parts each sum to their statistic.
    summed = PCADetector(variance=0.6, limits="textbook", combine="sum").fit(frame)
    c = summed.contributions(pl.DataFrame(new, schema=["a", "b", "c"], orient="row")).to_numpy()
    assert np.allclose(c.sum(1), t2 / summed.t2_limit_ + spe / summed.spe_limit_)


def test_jackson_mudholkar_limit_by_hand():
    lam = np.array([0.5, 0.3, 0.2])
    t1, t2, t3 = 1.0, 0.38, 0.160
    h0 = 1 - 2 * t1 * t3 / (3 * t2**2)
    c = 2.3263478740408408  # z_0.99
    expected = t1 * (c * np.sqrt(2 * t2 * h0**2) / t1 + 1 + t2 * h0 * (h0 - 1) / t1**2) ** (1 / h0)
    assert np.isclose(spe_limit_jackson_mudholkar(lam, 0.01), expected)


def test_calibrated_limits_hold_alpha_on_fresh_normal_rows(train: pl.DataFrame):
    alpha, n = 0.01, 20_000
    fresh = normal_rows(n, seed=7)
    tol = 4 * np.sqrt(alpha * (1 - alpha) / 3000 + alpha * (1 - alpha) / n)  # calibration + test noise
    det = PCADetector(alpha=alpha).fit(train)
    t2, spe = det.statistics(fresh)
    assert abs((t2 > det.t2_limit_).mean() - alpha) < tol
    assert abs((spe > det.spe_limit_).mean() - alpha) < tol
    for make in (lambda: PCADetector(alpha=alpha), lambda: DynamicPCADetector(lags=1, alpha=alpha),
                 lambda: IsolationForestDetector(n_estimators=50)):
        detector = make()
        threshold = QuantileThreshold(alpha).fit(held_out_scores(detector, train, n_folds=5))
        alarms = threshold.predict(detector.fit(train).score_samples(fresh))
        assert alarms.dtype == np.uint8 and abs(alarms.mean() - alpha) < tol, type(detector).__name__


@pytest.mark.parametrize("name", ["pca", "pca_sum", "dpca", "iforest", "knn"])
def test_mean_shift_is_detected_and_blamed_on_its_variable(name: str, train: pl.DataFrame):
    det = FACTORIES[name]()
    threshold = QuantileThreshold(0.01).fit(held_out_scores(det, train))
    det.fit(train)
    faulty = normal_rows(400, seed=5).with_columns(pl.col("x3") + 3.0)  # about 3 sigma of x3
    detected = threshold.predict(det.score_samples(faulty)).mean()
    if name == "iforest":
        # Documented weakness: a shift in one variable moves the isolation depth little.
        assert detected < 0.5
    else:
        assert detected > 0.95
    contrib = det.contributions(faulty).mean()
    assert contrib.transpose(include_header=True).sort("column_0")["column"][-1] == "x3"


def test_dynamic_pca_lags_and_folds_back():
    A = np.arange(12.0).reshape(6, 2)
    L = lagged(A, 2, pad=False)
    assert L.shape == (4, 6) and L[0].tolist() == [4, 5, 2, 3, 0, 1]
    padded = lagged(A, 2, pad=True)
    assert padded.shape == (6, 6) and padded[0].tolist() == [0, 1, 0, 1, 0, 1]
    det = DynamicPCADetector(lags=2)
    assert det._fold(np.ones((3, 6))).tolist() == [[3.0, 3.0]] * 3


def test_postprocessing_steps():
    assert persist(np.array([0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1]), 3).tolist() == \
        [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert persist(np.array([1, 0, 1]), 1).tolist() == [1, 0, 1]
    s = np.array([0.0, 0.0, 8.0, 0.0, 0.0])
    assert rolling_median(s, 3).tolist() == [0.0, 0.0, 0.0, 0.0, 0.0]
    e = ewma(np.array([0.0, 0.0, 4.0, 4.0]), halflife=1.0)
    assert e[1] == 0.0 and 0 < e[2] < e[3] < 4.0
    assert QuantileThreshold(0.25).fit(np.arange(1.0, 9.0)).threshold_ == 7.0


def test_isolation_forest_arrays_score_as_scikit_learn(train: pl.DataFrame):
    """The plain-array trees (what the model store saves) give scikit-learn's scores."""
    det = IsolationForestDetector(n_estimators=50, random_state=3).fit(train)
    test = normal_rows(500, seed=9).with_columns(pl.col("x2") * 3)
    arrays = det.trees_.score(test.to_numpy())
    assert np.allclose(arrays, det.score_samples(test), rtol=1e-12, atol=0)
    assert np.allclose(arrays[:7], det.trees_.score(test[:7].to_numpy()), rtol=0, atol=0)


@pytest.mark.parametrize("lags", [0, 2])
def test_chunked_scoring_equals_the_straightforward_formula(lags: int):
    """The chunked kernel (in-place standardising, |z|² - |t|², several chunks and a partial
    one) gives what the textbook formulas give on the (n, m) matrix, and names a bad column
    wherever its NaN falls."""
    from analytics.multivariate.pca import CHUNK_ROWS
    rng = np.random.default_rng(11)
    p, n = 7, 2 * CHUNK_ROWS + 123
    mix = rng.normal(size=(p, p))
    columns = [f"v{i}" for i in range(p)]
    train = pl.DataFrame(rng.normal(size=(600, p)) @ mix + 40.0, schema=columns, orient="row")
    X = rng.normal(size=(n, p)) @ mix * 1.5 + 40.0
    X[::97, 3] += 8.0  # some outliers
    det = (DynamicPCADetector(lags=lags) if lags else PCADetector(combine="sum")).fit(train)
    M = lagged(X, lags, pad=True)
    Z = (M - det.mean_) / det.scale_
    T = Z @ det.components_.T
    t2 = (T**2 / det.eigenvalues_).sum(axis=1)
    spe = ((Z - T @ det.components_) ** 2).sum(axis=1)
    frame = pl.DataFrame(X, schema=columns, orient="row")
    got_t2, got_spe = det.statistics(frame)
    assert np.allclose(got_t2, t2, rtol=1e-9, atol=1e-9) and np.allclose(got_spe, spe, rtol=1e-9, atol=1e-9)
    assert (got_spe >= 0).all()
    expected = t2 / det.t2_limit_ + spe / det.spe_limit_ if not lags else \
        np.maximum(t2 / det.t2_limit_, spe / det.spe_limit_)
    assert np.allclose(det.score_samples(frame), expected, rtol=1e-9, atol=1e-9)
    # A frame built column by column (several Polars chunks, Float32 and integer columns) scores the same.
    pieces = pl.concat([frame[:1000], frame[1000:]], rechunk=False).with_columns(pl.col("v0").cast(pl.Float32))
    assert np.allclose(det.score_samples(pieces), det.score_samples(frame.with_columns(
        pl.col("v0").cast(pl.Float32).cast(pl.Float64))), rtol=1e-12, atol=0)
    # A null in the last (partial) chunk, an infinity in the middle one: both named.
    bad = frame.with_columns(pl.when(pl.int_range(n) == n - 5).then(None).otherwise(pl.col("v2")).alias("v2"),
                             pl.when(pl.int_range(n) == CHUNK_ROWS + 1).then(float("inf")).otherwise(
                                 pl.col("v5")).alias("v5"))
    with pytest.raises(ValueError, match=r"\['v2', 'v5'\]"):
        det.score_samples(bad)


def test_nearest_neighbour_residual_by_hand():
    """Estimate = mean of the k nearest remembered rows (standardised), score = squared residual."""
    X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [4.0, 4.0], [5.0, 5.0], [2.0, 1.0]])
    frame = pl.DataFrame(X, schema=["a", "b"], orient="row")
    det = NearestNeighbourDetector(n_neighbors=2).fit(frame)
    new = np.array([[0.2, 0.1], [4.5, 4.4]])
    Z, zn = (X - X.mean(0)) / X.std(0, ddof=1), (new - X.mean(0)) / X.std(0, ddof=1)
    expected = []
    for z in zn:
        near = np.argsort(((Z - z) ** 2).sum(1))[:2]
        expected.append(((z - Z[near].mean(0)) ** 2).sum())
    got = det.score_samples(pl.DataFrame(new, schema=["a", "b"], orient="row"))
    assert np.allclose(got, expected)
    c = det.contributions(pl.DataFrame(new, schema=["a", "b"], orient="row")).to_numpy()
    assert np.allclose(c.sum(1), got)
    with pytest.raises(ValueError, match="too few rows"):
        NearestNeighbourDetector(n_neighbors=6).fit(frame)
