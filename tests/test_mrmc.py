"""Obuchowski-Rockette MRMC analysis against published Van Dyke results, brute force of the OR
formulas (any number of modalities, split-plot and unbalanced designs, every FOM) and simulated
truth."""

import csv
import itertools
import pathlib
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics

from busgen_jax.evaluation import fom, mrmc

DATA = pathlib.Path(__file__).parent / "data" / "mrmc_vandyke.csv"


@pytest.fixture(scope="module")
def vandyke():
    ratings = np.zeros((2, 5, 114))
    truth = np.zeros(114, dtype=int)
    with open(DATA, newline="") as handle:
        for row in csv.DictReader(handle):
            case = int(row["case_id"])
            ratings[int(row["modality"]), int(row["reader_id"]), case] = float(row["rating"])
            truth[case] = int(row["truth"])
    return truth, ratings


def test_vandyke_delong_matches_mrmcaov(vandyke):
    # MRMCaov documentation (Smith & Hillis), VanDyke, empirical AUC, cov = DeLong, RRRC.
    # MRMCaov reports treatment 1 - 2 = SE - cine; here the difference is cine - SE.
    result = mrmc.or_modalities(*vandyke, modalities=("SE", "cine"), cov_method="delong")
    comps = result.components
    assert comps["var"] == pytest.approx(0.0007921325, rel=1e-6)
    assert comps["cov1"] == pytest.approx(0.0003420090, rel=1e-6)
    assert comps["cov2"] == pytest.approx(0.0003395265, rel=1e-6)
    assert comps["cov3"] == pytest.approx(0.0002358497, rel=1e-6)
    assert comps["ms_t"] == pytest.approx(0.004796171, rel=1e-6)
    assert comps["ms_tr"] == pytest.approx(0.0005510306, rel=1e-6)
    rrrc = result.rrrc
    assert result.difference == pytest.approx(0.04380032, rel=1e-6)
    assert rrrc.statistic == pytest.approx(4.484854, rel=1e-6)
    assert rrrc.df == pytest.approx(15.06611, rel=1e-6)
    assert rrrc.p_value == pytest.approx(0.05123303, rel=1e-6)
    assert rrrc.std_err == pytest.approx(0.0206825, rel=1e-5)
    assert (rrrc.ci_low, rrrc.ci_high) == pytest.approx((-0.0002665519, 0.0878671960), rel=1e-5)
    # Per-modality reader-averaged AUC intervals (single-treatment OR analysis).
    se, cine = result.mean_fom["SE"], result.mean_fom["cine"]
    assert (se.estimate, se.std_err, se.df) == pytest.approx((0.8970370, 0.03307642, 12.59597))
    assert (se.ci_low, se.ci_high) == pytest.approx((0.8253461, 0.9687280), rel=1e-6)
    assert (cine.std_err, cine.df) == pytest.approx((0.02150464, 12.56530), rel=1e-6)


def test_vandyke_jackknife_matches_published(vandyke):
    result = mrmc.or_modalities(*vandyke, cov_method="jackknife")
    comps = result.components
    # MRMCaov, fixed readers, jackknife: variance components and the chi-square test.
    assert comps["var"] == pytest.approx(0.0008022883, rel=1e-6)
    assert comps["cov1"] == pytest.approx(0.0003466137, rel=1e-6)
    assert comps["cov2"] == pytest.approx(0.0003440748, rel=1e-6)
    assert comps["cov3"] == pytest.approx(0.0002390284, rel=1e-6)
    assert result.frrc.statistic == pytest.approx(5.475953, rel=1e-6)
    assert result.frrc.p_value == pytest.approx(0.01927984, rel=1e-6)
    assert result.frrc.std_err == pytest.approx(0.01871748, rel=1e-6)
    assert (result.frrc.ci_low, result.frrc.ci_high) == pytest.approx((0.00711473, 0.08048591))
    # MRMCaov, fixed cases: F = MS(T) / MS(T:R) on (1, 4) df.
    assert result.rrfc.statistic == pytest.approx(8.704, rel=1e-6)
    assert result.rrfc.df == 4
    assert result.rrfc.p_value == pytest.approx(0.04195875, rel=1e-6)
    # Hillis (2008) / RJafroc, random readers and cases, jackknife: F 4.46, ddf 15.26, p 0.0517.
    assert round(result.rrrc.statistic, 2) == 4.46
    assert round(result.rrrc.df, 2) == 15.26
    assert round(result.rrrc.p_value, 4) == 0.0517


def test_jackknife_covariance_matches_leave_one_out():
    rng = np.random.default_rng(0)
    truth = np.r_[np.ones(9), np.zeros(12)].astype(int)
    ratings = np.round(rng.normal(size=(2, 3, truth.size)) + truth, 1)
    auc, cov = fom.estimates(truth, ratings, "auc", cov_method="jackknife")
    flat = ratings.reshape(6, -1)
    leave_out = np.array(
        [
            [metrics.roc_auc_score(np.delete(truth, k), np.delete(row, k)) for row in flat]
            for k in range(truth.size)
        ]
    )
    n = truth.size
    expected = (n - 1) / n * (leave_out - leave_out.mean(0)).T @ (leave_out - leave_out.mean(0))
    np.testing.assert_allclose(cov, expected, atol=1e-12)
    np.testing.assert_allclose(auc.ravel(), [metrics.roc_auc_score(truth, r) for r in flat])


def _simulate(rng, *, n_readers=5, n_pos=40, n_neg=50, effect=0.0):
    """Ratings [2, r, N] with case, modality-case, reader-case and reader/interaction effects;
    `effect` shifts the separation of modality 1 only."""
    truth = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    n = truth.size
    separation = (
        1.2
        + rng.normal(0, 0.3, (1, n_readers, 1))
        + rng.normal(0, 0.15, (2, n_readers, 1))
        + effect * np.arange(2).reshape(2, 1, 1)
    )
    ratings = (
        separation * truth
        + rng.normal(0, 1.0, (1, 1, n))
        + rng.normal(0, 0.5, (2, 1, n))
        + rng.normal(0, 0.5, (1, n_readers, n))
        + rng.normal(0, 0.7, (2, n_readers, n))
    )
    return truth.astype(int), ratings


@pytest.mark.parametrize("cov_method", ["jackknife", "delong"])
def test_rrrc_type_one_error_and_power(cov_method):
    rng = np.random.default_rng(123)
    null = [mrmc.or_modalities(*_simulate(rng), cov_method=cov_method) for _ in range(250)]
    rate = np.mean([r.rrrc.p_value < 0.05 for r in null])
    # Hillis's ddf keeps the test near nominal; 250 studies give a binomial sd of about 0.014.
    assert 0.02 <= rate <= 0.09
    coverage = np.mean([r.rrrc.ci_low <= 0 <= r.rrrc.ci_high for r in null])
    assert coverage == pytest.approx(1 - rate)
    alternative = [
        mrmc.or_modalities(*_simulate(rng, effect=0.8), cov_method=cov_method) for _ in range(60)
    ]
    assert np.mean([r.rrrc.p_value < 0.05 for r in alternative]) > 0.6
    assert np.mean([r.difference for r in alternative]) > 0


def test_model_vs_readers_equals_model_copied_into_every_reader_slot():
    rng = np.random.default_rng(7)
    truth, ratings = _simulate(rng, n_readers=6)
    readers = ratings[0]
    model = ratings[1, 0] + 0.8 * truth
    direct = mrmc.or_model_vs_readers(truth, model, readers, cov_method="delong")
    copied = mrmc.or_modalities(
        truth, np.stack([readers, np.tile(model, (6, 1))]), cov_method="delong"
    )
    assert direct.difference == pytest.approx(copied.difference)
    for name in ("rrrc", "frrc", "rrfc"):
        a, b = getattr(direct, name), getattr(copied, name)
        assert (a.statistic, a.df, a.p_value, a.std_err) == pytest.approx(
            (b.statistic, b.df, b.p_value, b.std_err), rel=1e-9
        )
    assert direct.reader_fom["model"][0] == pytest.approx(metrics.roc_auc_score(truth, model))


def test_model_vs_readers_detects_a_better_model_and_not_an_average_one():
    rng = np.random.default_rng(11)
    better, average = [], []
    for _ in range(40):
        truth, ratings = _simulate(rng, n_readers=6)
        better.append(
            mrmc.or_model_vs_readers(truth, ratings[1, 0] + 1.0 * truth, ratings[0]).rrrc.p_value
        )
        # A model that is just the readers' mean rating is no worse than the readers.
        average.append(mrmc.or_model_vs_readers(truth, ratings[0].mean(0), ratings[0]).difference)
    assert np.mean(np.array(better) < 0.05) > 0.7
    assert np.mean(average) > 0


def test_bad_inputs_are_named():
    truth = np.r_[np.ones(5), np.zeros(5)]
    with pytest.raises(ValueError, match="ratings"):
        mrmc.or_modalities(truth, np.zeros((1, 4, 10)))
    with pytest.raises(ValueError, match="cov_method"):
        mrmc.or_modalities(truth, np.zeros((2, 4, 10)), cov_method="bootstrap")
    with pytest.raises(ValueError, match="ratings"):
        mrmc.or_modalities(truth, np.zeros((2, 4, 9)))


def _brute_fom(name, truth, row, threshold, max_fpr=0.3):
    """The FOM of one reader's read cases by sklearn or plain counting."""
    if name == "auc":
        return metrics.roc_auc_score(truth, row)
    if name == "sensitivity":
        return np.mean(row[truth == 1] >= threshold)
    if name == "specificity":
        return np.mean(row[truth == 0] < threshold)
    # sklearn's McClish-standardized pAUC, un-standardized: s = (1 + (A - min) / (max - min)) / 2.
    s = metrics.roc_auc_score(truth, row, max_fpr=max_fpr)
    low, high = max_fpr**2 / 2, max_fpr
    return low + (2 * s - 1) * (high - low)


def _brute_covariance(name, truth, flat, thresholds):
    """Jackknife covariance over the cases each pair of readers shared, by explicit loops."""
    k_rows = flat.shape[0]
    theta, influence = np.zeros(k_rows), np.full(flat.shape, np.nan)
    for a in range(k_rows):
        cases = np.flatnonzero(np.isfinite(flat[a]))
        theta[a] = _brute_fom(name, truth[cases], flat[a, cases], thresholds[a])
        for k in cases:
            keep = cases[cases != k]
            loo = _brute_fom(name, truth[keep], flat[a, keep], thresholds[a])
            influence[a, k] = (cases.size - 1) * (theta[a] - loo)
    cov = np.zeros((k_rows, k_rows))
    for a, b in itertools.product(range(k_rows), repeat=2):
        shared = np.flatnonzero(np.isfinite(flat[a]) & np.isfinite(flat[b]))
        if shared.size < 2:
            continue
        ua, ub = influence[a, shared], influence[b, shared]
        n_a, n_b = np.isfinite(flat[a]).sum(), np.isfinite(flat[b]).sum()
        cov[a, b] = np.sum((ua - ua.mean()) * (ub - ub.mean())) / (shared.size - 1)
        cov[a, b] *= shared.size / (n_a * n_b)
    return theta, cov


def _unbalanced(rng, t=2, r=4, n_pos=14, n_neg=16, missing=0.25):
    truth = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
    ratings = np.round(rng.normal(size=(t, r, truth.size)) + 1.2 * truth, 1)
    # A reader misses a case in every modality (iMRMC's and MRMCaov's missing reads).
    ratings[:, rng.random((r, truth.size)) < missing] = np.nan
    return truth, ratings


@pytest.mark.parametrize("name", ["auc", "sensitivity", "specificity", "pauc"])
def test_unbalanced_jackknife_matches_brute_force(name):
    truth, ratings = _unbalanced(np.random.default_rng(3))
    flat = ratings.reshape(-1, truth.size)
    thresholds = np.linspace(0.2, 0.9, flat.shape[0])
    figure = fom.FigureOfMerit(name, max_fpr=0.3)
    theta, cov = fom.estimates(truth, ratings, figure, thresholds.reshape(2, 4))
    expected_theta, expected_cov = _brute_covariance(name, truth, flat, thresholds)
    np.testing.assert_allclose(theta.ravel(), expected_theta, atol=1e-12)
    np.testing.assert_allclose(cov, expected_cov, atol=1e-12)


def test_unbalanced_delong_is_per_class_placement_covariance():
    truth, ratings = _unbalanced(np.random.default_rng(4), t=1, r=3)
    flat = ratings[0]
    _, cov = fom.estimates(truth, flat, "auc", cov_method="delong")
    place = np.full(flat.shape, np.nan)
    for a, row in enumerate(flat):
        read = np.isfinite(row)
        x, y = row[read & (truth == 1)], row[read & (truth == 0)]
        for k in np.flatnonzero(read):
            other = y if truth[k] else x
            psi = (row[k] > other) + 0.5 * (row[k] == other)
            place[a, k] = psi.mean() if truth[k] else 1 - psi.mean()
    for a, b in itertools.product(range(3), repeat=2):
        expected = 0.0
        for c in (0, 1):
            both = np.isfinite(flat[a]) & np.isfinite(flat[b]) & (truth == c)
            n_a = (np.isfinite(flat[a]) & (truth == c)).sum()
            n_b = (np.isfinite(flat[b]) & (truth == c)).sum()
            expected += np.cov(place[a, both], place[b, both])[0, 1] * both.sum() / (n_a * n_b)
        assert cov[a, b] == pytest.approx(expected, abs=1e-12)


def _brute_or(theta, cov, alpha=0.05):
    """Hillis (2008) RRRC F test and pairwise contrasts with explicit loops over the OR blocks."""
    t, r = theta.shape
    var, cov1, cov2, cov3 = [], [], [], []
    for (i, j), (k, m) in itertools.product(itertools.product(range(t), range(r)), repeat=2):
        value = cov[i * r + j, k * r + m]
        [[var, cov1], [cov2, cov3]][j != m][i != k].append(value)
    var, cov1, cov2, cov3 = map(np.mean, (var, cov1, cov2, cov3))
    grand = theta.mean()
    ms_t = r * sum((theta[i].mean() - grand) ** 2 for i in range(t)) / (t - 1)
    ms_tr = sum(
        (theta[i, j] - theta[i].mean() - theta[:, j].mean() + grand) ** 2
        for i in range(t)
        for j in range(r)
    ) / ((t - 1) * (r - 1))
    denominator = ms_tr + r * max(cov2 - cov3, 0)
    ddf = denominator**2 / (ms_tr**2 / ((t - 1) * (r - 1)))
    f_value = ms_t / denominator
    contrasts = {}
    for a, b in itertools.combinations(range(t), 2):
        d = theta[b].mean() - theta[a].mean()
        se = np.sqrt(2 * denominator / r)
        contrasts[a, b] = (d, se, 2 * stats.t.sf(abs(d / se), ddf))
    return f_value, ddf, stats.f.sf(f_value, t - 1, ddf), contrasts


@pytest.mark.parametrize("design", ["factorial", "split-plot", "unbalanced"])
def test_three_modalities_match_brute_force_or(design):
    rng = np.random.default_rng(5)
    truth, ratings = _unbalanced(rng, t=3, r=6, n_pos=24, n_neg=30, missing=0.0)
    ratings[1] += 0.3 * truth
    if design == "split-plot":
        # Readers 0-2 read the first half of each class, readers 3-5 the second half.
        half = np.r_[np.arange(12), 24 + np.arange(15)]
        other = np.setdiff1d(np.arange(truth.size), half)
        ratings[:, :3, other] = np.nan
        ratings[:, 3:, half] = np.nan
    elif design == "unbalanced":
        ratings[:, rng.random((6, truth.size)) < 0.2] = np.nan
    result = mrmc.or_modalities(truth, ratings, modalities=("A", "B", "C"))
    theta, cov = fom.estimates(truth, ratings)
    if design == "split-plot":
        # Readers of different case halves share no case: independent by design.
        assert np.all(cov.reshape(3, 6, 3, 6)[:, :3, :, 3:] == 0)
    f_value, ddf, p_value, contrasts = _brute_or(theta, cov)
    overall = result.overall["rrrc"]
    assert (overall.statistic, overall.df_num, overall.df_den, overall.p_value) == pytest.approx(
        (f_value, 2, ddf, p_value), rel=1e-9
    )
    assert result.design == ("factorial" if design == "factorial" else "split-plot/unbalanced")
    assert [c.comparison for c in result.contrasts] == ["B - A", "C - A", "C - B"]
    for contrast, (d, se, p) in zip(result.contrasts, contrasts.values(), strict=True):
        assert (contrast.rrrc.estimate, contrast.rrrc.std_err, contrast.rrrc.p_value) == (
            pytest.approx((d, se, p), rel=1e-9)
        )
    np.testing.assert_allclose(result.reader_fom["B"], theta[1])


def test_two_modality_overall_f_is_the_contrast_squared(vandyke):
    result = mrmc.or_modalities(*vandyke, fixed_reader_test="f")
    for name in ("rrrc", "frrc", "rrfc"):
        overall, contrast = result.overall[name], getattr(result, name)
        assert overall.statistic == pytest.approx(contrast.statistic, rel=1e-9)
        assert overall.p_value == pytest.approx(contrast.p_value, rel=1e-9)
    # DBM-style fixed readers: F(1, c - 1) for the 114 Van Dyke cases.
    assert result.frrc.df == 113
    assert result.frrc.p_value == pytest.approx(stats.f.sf(result.frrc.statistic, 1, 113))
    # Per-reader tests use that reader's own variance: Var_j + Var'_j - 2 Cov_j.
    theta, cov = fom.estimates(*vandyke)
    d = theta[1, 2] - theta[0, 2]
    se = np.sqrt(cov[2, 2] + cov[7, 7] - 2 * cov[2, 7])
    assert result.per_reader[2].estimate == pytest.approx(d)
    assert result.per_reader[2].p_value == pytest.approx(2 * stats.norm.sf(abs(d / se)))


def test_variance_components_are_unbiased_under_the_or_model():
    # theta_ij = tau_i + R_j + TR_ij + e_ij with e ~ N(0, Sigma_OR) and known components.
    rng = np.random.default_rng(6)
    t, r, var_r, var_tr = 2, 5, 0.0015, 0.0004
    var, cov1, cov2, cov3 = 0.0008, 0.0004, 0.0003, 0.0002
    same_t, same_r = np.eye(t)[:, None, :, None], np.eye(r)[None, :, None, :]
    sigma = np.where(same_t * same_r, var, 0) + np.where((1 - same_t) * same_r, cov1, 0)
    sigma = (
        sigma
        + np.where(same_t * (1 - same_r), cov2, 0)
        + np.where((1 - same_t) * (1 - same_r), cov3, 0)
    )
    sigma = sigma.reshape(t * r, t * r)
    n = 2000
    thetas = (
        rng.normal(0, np.sqrt(var_r), (n, 1, r))
        + rng.normal(0, np.sqrt(var_tr), (n, t, r))
        + rng.multivariate_normal(np.zeros(t * r), sigma, size=n).reshape(n, t, r)
    )
    estimates = [
        (c["var_r"], c["var_tr"]) for c in (mrmc.or_components(theta, sigma) for theta in thetas)
    ]
    mean = np.mean(estimates, axis=0)
    sem = np.std(estimates, axis=0) / np.sqrt(len(estimates))
    assert abs(mean[0] - var_r) < 4 * sem[0] and abs(mean[1] - var_tr) < 4 * sem[1]


def test_zero_standard_error_is_p_one_not_zero():
    truth = np.r_[np.ones(40), np.zeros(50)].astype(int)
    for seed in range(10):
        # Rounded ratings: ties, and covariance sums that cancel to 0 or to rounding residue.
        ratings = np.round(np.random.default_rng(seed).normal(size=(5, 90)) + truth, 1)
        same = mrmc.or_modalities(truth, np.stack([ratings, ratings]))
        for test in (same.rrrc, same.frrc, same.rrfc, same.overall["rrrc"]):
            assert test.p_value == 1.0 and test.statistic == 0.0
        model = ratings[0]
        with pytest.warns(UserWarning, match="listed among the readers"):
            copies = mrmc.or_model_vs_readers(truth, model, np.tile(model, (4, 1)))
        assert copies.difference == 0.0 and copies.rrrc.p_value == 1.0
    # Perfect separation everywhere: every AUC is 1 and every variance exactly 0.
    perfect = np.random.default_rng(0).normal(size=(5, 90)) + 10 * truth
    result = mrmc.or_modalities(truth, np.stack([perfect, perfect + 1]))
    assert result.difference == 0.0 and result.rrrc.p_value == 1.0


def test_model_listed_among_readers_warns():
    truth, ratings = _simulate(np.random.default_rng(9))
    model = ratings[1, 0] + truth
    readers = np.vstack([ratings[0], np.exp(model)])
    with pytest.warns(UserWarning, match="reader '5' ranks every case exactly as the model"):
        mrmc.or_model_vs_readers(truth, model, readers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mrmc.or_model_vs_readers(truth, model, ratings[0])


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda t, r: mrmc.or_modalities(t[[0, *range(40, 90)]], r[:, :, [0, *range(40, 90)]]),
            "1 case",
        ),
        (lambda t, r: mrmc.or_modalities(t, r, alpha=0.95), "'alpha' is 0.95"),
        (lambda t, r: mrmc.or_modalities(t, r, alpha=1.5), "'alpha' is 1.5"),
        (lambda t, r: mrmc.or_modalities(t, r, fom="accuracy"), "'fom' is 'accuracy'"),
        (lambda t, r: mrmc.or_modalities(t, r, fom="sensitivity"), "'thresholds' are required"),
        (lambda t, r: mrmc.or_modalities(t, r, fixed_reader_test="z"), "'fixed_reader_test'"),
        (lambda t, r: mrmc.or_modalities(t, r, fom="pauc", cov_method="delong"), "AUC only"),
        (
            lambda t, r: mrmc.or_model_vs_readers(t, r[0, 0], [list(r[0, 0]), list(r[0, 1, :-1])]),
            "'reader_ratings' is not a rectangular",
        ),
        (lambda t, r: mrmc.or_model_vs_readers(t, r[0, :2], r[0]), "'model_scores' must have 1"),
        (lambda t, r: mrmc.or_modalities(t, np.where(t == 1, np.nan, r)), "read 0 case"),
    ],
)
def test_defective_inputs_are_named(call, message):
    truth, ratings = _simulate(np.random.default_rng(10))
    with pytest.raises(ValueError, match=message):
        call(truth, ratings)


def test_sensitivity_fom_against_counting():
    truth, ratings = _simulate(np.random.default_rng(12), n_readers=4)
    result = mrmc.or_modalities(truth, ratings, fom="sensitivity", thresholds=1.0)
    expected = (ratings[:, :, truth == 1] >= 1.0).mean(axis=2)
    np.testing.assert_allclose(result.reader_fom["1"], expected[1])
    assert result.difference == pytest.approx(expected[1].mean() - expected[0].mean())
    assert result.fom == "sensitivity" and np.isnan(result.mean_fom["0"].p_value)
