"""Statistics merged from uneven chunks in 3 groups, against scikit-learn on the same data in one process (no Ray).

Tolerances: float64 merges of float64 data agree with sklearn to 1e-9 relative
(rounding only); the median fill is checked by its rank, within the sketch's
own stated rank error; PCA and LDA up to each component's sign (and LDA's scale).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.feature_selection import chi2, r_regression
from sklearn.impute import SimpleImputer
from sklearn.metrics import mutual_info_score
from sklearn.preprocessing import MinMaxScaler, Normalizer, StandardScaler

from rayps.errors import ConfigError
from rayps.worker.data.colstats import Moments, merge_all
from rayps.worker.data.config import data_config
from rayps.worker.data.pipeline import groups_of, prepare
from rayps.worker.data.sketch import QuantileSketch

N, D = 3000, 6
CUTS = [0, 400, 1300, 1350, 3000]  # four files of 400, 900, 50 and 1650 rows


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, N)
    x = rng.normal(size=(N, D)) + y[:, None] * np.arange(D) * 0.3
    x[:, 2] = np.abs(x[:, 2]) * 5 + 1  # skewed, positive
    x[:, 4] = rng.lognormal(size=N)
    return x, y


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    x, y = make_data()
    for i, (a, b) in enumerate(zip(CUTS, CUTS[1:])):
        table = pa.table({**{f"f{j}": x[a:b, j] for j in range(D)}, "label": y[a:b]})
        pq.write_table(table, root / f"part-{i}.parquet", row_group_size=333)
    return str(root), x, y


def fitted(path, **keys):
    config = data_config({"path": path, "test_fraction": 0, "chunk_rows": 200, **keys})
    return prepare(config, seed=0, parallel=3)


def all_rows(source):
    return source.batch(np.arange(len(source)))


def test_the_chunks_are_uneven_and_go_to_three_groups(dataset):
    prepared = fitted(dataset[0])
    sizes = sorted({c.rows for c in prepared.train.chunks})
    assert len(prepared.train.chunks) == 20 and sizes[0] == 34 and sizes[-1] == 200  # 900 = 333 + 333 + 234 = ... + 200 + 34
    assert len(groups_of([("train", c) for c in prepared.train.chunks], 3)) == 3


def test_sketch_answers_within_the_rank_error_it_states():
    rng = np.random.default_rng(1)
    values = rng.lognormal(size=400_000)
    parts = [QuantileSketch(512, seed=i) for i in range(3)]
    for i, piece in enumerate(np.array_split(values, 41)):
        parts[i % 3].add(piece)
    sketch = parts[0].merge(parts[1]).merge(parts[2])
    ordered = np.sort(values)
    bound = sketch.rank_error()
    assert 0 < bound < 0.02
    for q in (0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0):
        rank = np.searchsorted(ordered, sketch.quantile(q), side="right") / len(values)
        assert abs(rank - q) <= bound + 1 / len(values), q


def test_moments_merged_in_any_grouping_equal_one_pass():
    x = np.random.default_rng(2).normal(loc=1e3, size=(1000, 4))
    pieces = [Moments.of(p) for p in np.array_split(x, [3, 10, 500, 999])]
    merged = merge_all(pieces)
    chained = pieces[0].merge(pieces[1]).merge(pieces[2].merge(pieces[3].merge(pieces[4])))
    for m in (merged, chained):
        np.testing.assert_allclose(m.mean, x.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(m.covariance(), np.cov(x, rowvar=False, bias=True), rtol=1e-9)


@pytest.mark.parametrize("scale, reference", [("standard", StandardScaler()), ("minmax", MinMaxScaler())])
def test_scalers_match_sklearn(dataset, scale, reference):
    path, x, _ = dataset
    got = all_rows(fitted(path, scale=scale).train)[0].numpy()
    np.testing.assert_allclose(got, reference.fit_transform(x), rtol=1e-5, atol=1e-5)  # float32 out


def test_l2_normalization_matches_sklearn_normalizer(dataset):
    path, x, _ = dataset
    got = all_rows(fitted(path, normalize="l2").train)[0].numpy()
    np.testing.assert_allclose(got, Normalizer().fit_transform(x), rtol=1e-5, atol=1e-6)


def test_imputer_mean_is_exact_and_median_is_within_the_sketch_rank_error(tmp_path):
    x, y = make_data(3)
    holes = np.random.default_rng(4).random(x.shape) < 0.05
    for i, (a, b) in enumerate(zip(CUTS, CUTS[1:])):
        cols = {f"f{j}": pa.array(x[a:b, j], mask=holes[a:b, j]) for j in range(D)}
        pq.write_table(pa.table({**cols, "label": y[a:b]}), tmp_path / f"p{i}.parquet", row_group_size=333)
    with_nan = np.where(holes, np.nan, x)
    mean = fitted(str(tmp_path), quality={"missing": {"policy": "mean"}})
    np.testing.assert_allclose(mean.transform.fix.fill, SimpleImputer(strategy="mean").fit(with_nan).statistics_,
                               rtol=1e-12)
    assert mean.final.counts["filled"].tolist() == holes.sum(axis=0).tolist()
    median = fitted(str(tmp_path), quality={"missing": {"policy": "median"}})
    exact = SimpleImputer(strategy="median").fit(with_nan).statistics_
    bound = max(s.rank_error() for s in median.first.train.sketches)
    for j in range(D):
        column = np.sort(with_nan[~holes[:, j], j])
        rank = np.searchsorted(column, median.transform.fix.fill[j], side="right") / len(column)
        assert abs(rank - 0.5) <= bound + 1 / len(column), (j, median.transform.fix.fill[j], exact[j])


def test_chi2_pearson_and_mutual_information_match_sklearn(dataset):
    path, x, y = dataset
    chi = fitted(path, scale="minmax", select={"method": "chi2", "k": 3})
    expected = chi2(MinMaxScaler().fit_transform(x), y)[0]
    scores = chi.transform.features.info["scores"]
    np.testing.assert_allclose([scores[f"f{j}"] for j in range(D)], expected, rtol=1e-9)
    assert chi.transform.features.info["selected"] == [f"f{j}" for j in sorted(np.argsort(-expected)[:3])]

    r = fitted(path, select={"method": "pearson", "k": 2}).transform.features.info["scores"]
    np.testing.assert_allclose([r[f"f{j}"] for j in range(D)], r_regression(x, y.astype(float)), rtol=1e-9)

    mi = fitted(path, select={"method": "mutual_info", "k": 2, "bins": 8})
    scores = mi.transform.features.info["scores"]
    expected = [mutual_info_score(y, np.digitize(x[:, j], mi.edges[j])) for j in range(D)]
    np.testing.assert_allclose([scores[f"f{j}"] for j in range(D)], expected, rtol=1e-9)
    assert all(len(e) == 7 for e in mi.edges)  # 8 equal-frequency bins from the merged sketches


def test_pca_matches_sklearn_up_to_sign(dataset):
    path, x, _ = dataset
    prepared = fitted(path, scale="standard", generate={"method": "pca", "k": 3})
    xs = StandardScaler().fit_transform(x)
    reference = PCA(3).fit(xs)
    ours = prepared.transform.features
    np.testing.assert_allclose(np.abs(ours.project.T), np.abs(reference.components_), atol=1e-9)
    np.testing.assert_allclose(ours.info["explained_variance"], reference.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(ours.info["explained_variance_ratio"], reference.explained_variance_ratio_, rtol=1e-9)
    got = all_rows(prepared.train)[0].numpy()
    want = reference.transform(xs)
    np.testing.assert_allclose(np.abs(got), np.abs(want), atol=1e-4)


def test_lda_matches_sklearn_eigen_solver_up_to_sign_and_scale(dataset):
    path, x, y = dataset
    prepared = fitted(path, generate={"method": "lda", "k": 2})
    reference = LinearDiscriminantAnalysis(solver="eigen").fit(x, y)
    ours = prepared.transform.features.project
    for i in range(2):
        a, b = ours[:, i], reference.scalings_[:, i]
        cosine = abs(a @ b) / np.linalg.norm(a) / np.linalg.norm(b)
        assert cosine > 1 - 1e-9
    np.testing.assert_allclose(prepared.transform.features.info["explained_variance_ratio"],
                               reference.explained_variance_ratio_[:2], rtol=1e-7)
    got = all_rows(prepared.train)[0].numpy()
    want = reference.transform(x)
    for i in range(2):
        assert abs(np.corrcoef(got[:, i], want[:, i])[0, 1]) > 1 - 1e-6


def test_zscore_fences_count_and_clip_exactly_the_values_beyond_them(dataset):
    path, x, _ = dataset
    prepared = fitted(path, quality={"outliers": {"rule": "zscore", "threshold": 2.5, "policy": "clip"}})
    lower, upper = x.mean(axis=0) - 2.5 * x.std(axis=0), x.mean(axis=0) + 2.5 * x.std(axis=0)
    np.testing.assert_allclose(prepared.transform.fix.lower, lower, rtol=1e-9)
    beyond = ((x < lower) | (x > upper)).sum(axis=0)
    assert prepared.final.counts["outliers"].tolist() == beyond.tolist()
    assert prepared.final.counts["clipped"].tolist() == beyond.tolist()
    got = all_rows(prepared.train)[0].numpy()
    np.testing.assert_allclose(got, np.clip(x, lower, upper), rtol=1e-6)


def test_sampling_by_ratio_by_class_and_by_importance(tmp_path):
    rng = np.random.default_rng(5)
    n = 40_000
    y = (rng.random(n) < 0.2).astype(np.int64)  # 20% positives
    w = rng.gamma(2.0, size=n)
    value = w * 3 + rng.normal(size=n)  # a quantity that grows with the weight
    pq.write_table(pa.table({"v": value, "w": w, "label": y}), tmp_path / "s.parquet", row_group_size=7000)
    base = {"path": str(tmp_path / "s.parquet"), "test_fraction": 0, "chunk_rows": 3000, "features": ["v"]}

    def run(sample):
        return prepare(data_config({**base, "sample": sample}), seed=1, parallel=3)

    uniform = run({"method": "uniform", "ratio": 0.25})
    assert abs(len(uniform.train) / n - 0.25) < 0.01
    assert uniform.train.kept == run({"method": "uniform", "ratio": 0.25}).train.kept  # seeded: reproducible
    strat = run({"method": "stratified", "ratio": 0.1})
    labels = all_rows(strat.train)[1].numpy()
    for c in (0, 1):  # each class keeps its share to within one row per chunk
        assert abs((labels == c).sum() - 0.1 * (y == c).sum()) <= len(strat.train.chunks)
    down = run({"method": "stratified", "per_class": {0: 0.25, 1: 1.0}})
    xb, yb, wb = all_rows(down.train)
    assert abs((yb == 0).sum().item() - 0.25 * (y == 0).sum()) <= len(down.train.chunks)
    # weights 1/ratio, scaled to average 1: the weighted class mix is the data's again
    assert abs(float(wb[yb == 1].sum() / wb.sum()) - y.mean()) < 0.005

    imp = run({"method": "importance", "ratio": 0.1, "weight": "w"})
    xb, _, wb = all_rows(imp.train)
    assert abs(len(imp.train) / n - 0.1) < 0.01
    estimate = float((wb * xb[:, 0]).sum() / wb.sum())
    assert abs(estimate - value.mean()) < 0.05 * abs(value.mean())  # unbiased
    assert float(xb[:, 0].mean()) > value.mean() * 1.2  # the sample itself leans to heavy rows


def test_a_wrong_type_in_a_column_names_the_file_row_group_and_column(tmp_path):
    pq.write_table(pa.table({"a": [1.0, 2.0], "label": [0, 1]}), tmp_path / "good.parquet")
    pq.write_table(pa.table({"a": ["x", "y"], "label": [0, 1]}), tmp_path / "bad.parquet")
    with pytest.raises(ConfigError, match=r"bad.parquet, row group 0, column 'a': type string, not a number"):
        fitted(str(tmp_path))


def test_a_truncated_file_is_named_before_anything_is_read(tmp_path):
    pq.write_table(pa.table({"a": np.arange(100.0), "label": np.zeros(100, dtype=np.int64)}), tmp_path / "t.parquet")
    data = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "t.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"t.parquet: not a readable Parquet file \(truncated or corrupt\?\)"):
        fitted(str(tmp_path))


def test_a_corrupt_row_group_names_the_file_row_group_and_column(tmp_path):
    path = tmp_path / "c.parquet"
    table = pa.table({"a": np.arange(1000.0), "b": np.arange(1000.0), "label": np.zeros(1000, dtype=np.int64)})
    pq.write_table(table, path, row_group_size=500, compression="snappy")
    meta = pq.ParquetFile(path).metadata
    column = meta.row_group(1).column(1)  # row group 1, column b: overwrite its pages
    data = bytearray(path.read_bytes())
    start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    data[start:start + column.total_compressed_size] = os.urandom(column.total_compressed_size)
    assert data[-4:] == b"PAR1"  # the footer is intact: the file lists fine, the row group does not read
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"c.parquet, row group 1, column 'b': cannot be read"):
        fitted(str(tmp_path))


def test_a_saved_state_rebuilds_the_same_rows_without_a_pass(dataset):
    path, _, _ = dataset
    config = data_config({"path": path, "chunk_rows": 200, "scale": "standard",
                          "sample": {"method": "uniform", "ratio": 0.5}})
    first = prepare(config, seed=4, parallel=3)
    again = prepare(config, seed=4, parallel=3, saved=first.state())
    assert again.passes == 0 and again.train.kept == first.train.kept and again.test.kept == first.test.kept
    for a, b in ((first.train, again.train), (first.test, again.test)):
        for got, want in zip(all_rows(a), all_rows(b)):
            assert np.array_equal(got.numpy(), want.numpy())


def test_missing_values_without_a_policy_fail_naming_the_columns(tmp_path):
    pq.write_table(pa.table({"a": pa.array([1.0, None, 3.0]), "b": [1.0, 2.0, 3.0], "label": [0, 1, 0]}),
                   tmp_path / "m.parquet")
    with pytest.raises(ConfigError, match=r"missing values .* \('a': 1\); set data.quality.missing.policy"):
        fitted(str(tmp_path))


def test_files_may_order_their_columns_differently_but_not_hold_different_ones(tmp_path):
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0], "label": [0, 1]}), tmp_path / "p0.parquet")
    pq.write_table(pa.table({"b": [5.0, 6.0], "label": [1, 0], "a": [7.0, 8.0]}), tmp_path / "p1.parquet")
    x = all_rows(fitted(str(tmp_path)).train)[0].numpy()
    assert x.tolist() == [[1, 3], [2, 4], [7, 5], [8, 6]]  # read by name, in the first file's order
    pq.write_table(pa.table({"a": [1.0], "c": [2.0], "label": [0]}), tmp_path / "p2.parquet")
    with pytest.raises(ConfigError, match=r"p2.parquet: columns \['a', 'c'\] differ from the first file's"):
        fitted(str(tmp_path))


def test_sampling_that_needs_classes_or_weights_says_so(tmp_path):
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "label": [0.5, 1.5, 2.5]}), tmp_path / "r.parquet")
    with pytest.raises(ConfigError, match="stratified needs class labels"):
        fitted(str(tmp_path), sample={"method": "stratified", "ratio": 0.5})
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    np.save(tmp_path / "y.npy", np.zeros(4, dtype=np.int64))
    with pytest.raises(ConfigError, match="importance needs a weight column"):
        prepare(data_config({"x": str(tmp_path / "x.npy"), "y": str(tmp_path / "y.npy"),
                             "sample": {"method": "importance", "weight": "w"}}))


def test_a_fitted_transform_fills_every_column_so_new_rows_with_holes_still_score(dataset):
    path, x, _ = dataset
    transform = fitted(path, quality={"missing": {"policy": "mean"}}, scale="standard").transform
    rows = x[:3].copy()
    rows[0, 1] = np.nan  # the train data had no hole here
    inputs, kept = transform.apply(rows)
    assert kept.all() and np.isfinite(inputs).all()
    np.testing.assert_allclose(inputs[0, 1], 0.0, atol=1e-6)  # the mean, standardized


def test_a_test_set_of_its_own_is_read_in_the_train_sets_column_order(tmp_path):
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "b": [10.0, 20.0, 30.0], "label": [0, 1, 0]}),
                   tmp_path / "train.parquet")
    pq.write_table(pa.table({"label": [1, 1], "b": [40.0, 50.0], "a": [4.0, 5.0]}), tmp_path / "test.parquet")
    prepared = prepare(data_config({"path": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")}))
    assert len(prepared.train) == 3 and all_rows(prepared.test)[0].tolist() == [[4.0, 40.0], [5.0, 50.0]]
