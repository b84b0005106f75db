"""Obuchowski-Rockette MRMC analysis against published Van Dyke results and simulated truth."""

import csv
import pathlib

import numpy as np
import pytest
from sklearn import metrics

from busgen_jax.evaluation import mrmc

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
    se, cine = result.mean_auc["SE"], result.mean_auc["cine"]
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
    auc, cov = mrmc.auc_covariance(truth, ratings, method="jackknife")
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
    assert direct.auc["model"][0] == pytest.approx(metrics.roc_auc_score(truth, model))


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
        mrmc.or_modalities(truth, np.zeros((3, 4, 10)))
    with pytest.raises(ValueError, match="cov_method"):
        mrmc.or_modalities(truth, np.zeros((2, 4, 10)), cov_method="bootstrap")
    with pytest.raises(ValueError, match="ratings"):
        mrmc.or_modalities(truth, np.zeros((2, 4, 9)))
