"""Clinical statistics against sklearn, brute force, closed forms and hand-worked examples."""

import json

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics

from busgen_jax.evaluation import statistics


def _scored_cases(n_pos=12, n_neg=15, seed=0, decimals=1, n_scorers=2):
    rng = np.random.default_rng(seed)
    truth = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
    # Rounding makes ties, which midranks must count as 1/2.
    scores = np.round(rng.normal(size=(n_scorers, truth.size)) + truth, decimals)
    return truth, scores


def _brute_force_delong(truth, scores):
    """DeLong covariance from placement values computed by explicit double loops."""
    x, y = scores[:, truth == 1], scores[:, truth == 0]
    k, m, n = scores.shape[0], x.shape[1], y.shape[1]
    v10, v01 = np.zeros((k, m)), np.zeros((k, n))
    for r in range(k):
        for i in range(m):
            for j in range(n):
                psi = 1.0 if x[r, i] > y[r, j] else 0.5 if x[r, i] == y[r, j] else 0.0
                v10[r, i] += psi / n
                v01[r, j] += psi / m
    s10 = np.cov(v10, ddof=1)
    s01 = np.cov(v01, ddof=1)
    return v10.mean(axis=1), s10 / m + s01 / n


@pytest.mark.parametrize("decimals", [0, 1, 6])
def test_auc_matches_sklearn(decimals):
    truth, scores = _scored_cases(decimals=decimals, n_scorers=3)
    auc, _, _ = statistics.delong_components(truth, scores)
    expected = [metrics.roc_auc_score(truth, s) for s in scores]
    np.testing.assert_allclose(auc, expected, rtol=0, atol=1e-12)
    assert statistics.roc_auc_ci(truth, scores[0]).auc == pytest.approx(expected[0], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_delong_covariance_matches_double_loop(seed):
    truth, scores = _scored_cases(n_pos=9, n_neg=11, seed=seed, decimals=0)
    auc, cov = statistics.delong_covariance(truth, scores)
    expected_auc, expected_cov = _brute_force_delong(truth, scores)
    np.testing.assert_allclose(auc, expected_auc, atol=1e-12)
    np.testing.assert_allclose(cov, expected_cov, atol=1e-12)


def test_delong_2x2_hand_worked():
    # X = (0.9, 0.4) positives, Y = (0.5, 0.1) negatives: V10 = (1, 1/2), V01 = (1/2, 1),
    # AUC = 3/4, S10 = S01 = 1/8, Var = S10/2 + S01/2 = 1/8.
    truth = np.array([1, 1, 0, 0])
    scores = np.array([0.9, 0.4, 0.5, 0.1])
    result = statistics.roc_auc_ci(truth, scores)
    assert result.auc == pytest.approx(0.75)
    assert result.std_err == pytest.approx(np.sqrt(0.125))
    assert result.ci_low == pytest.approx(0.75 - 1.959964 * np.sqrt(0.125), abs=1e-6)
    assert result.ci_high == 1.0


def test_delong_variance_agrees_with_bootstrap():
    truth, scores = _scored_cases(n_pos=80, n_neg=120, seed=3, decimals=3, n_scorers=1)
    delong_var = statistics.roc_auc_ci(truth, scores[0]).std_err ** 2
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(truth == 1), np.flatnonzero(truth == 0)
    # Stratified resamples keep the positives first, so all replicates share one truth vector
    # and their AUCs (rank statistics, checked against sklearn above) come in one call.
    index = np.concatenate(
        [rng.choice(pos, (2000, pos.size)), rng.choice(neg, (2000, neg.size))], axis=1
    )
    replicates, _, _ = statistics.delong_components(truth, scores[0][index])
    assert delong_var == pytest.approx(np.var(replicates), rel=0.12)


def test_paired_delong_test_closed_form():
    truth, scores = _scored_cases(n_pos=30, n_neg=40, seed=5, decimals=2)
    result = statistics.delong_test(truth, scores[0], scores[1])
    auc, cov = _brute_force_delong(truth, scores)
    std_err = np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    z = (auc[1] - auc[0]) / std_err
    assert result.difference == pytest.approx(auc[1] - auc[0])
    assert result.z == pytest.approx(z)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert result.ci_high - result.ci_low == pytest.approx(2 * 1.959964 * std_err, rel=1e-6)
    # A monotone transform has the same ranks: no difference at all.
    same = statistics.delong_test(truth, scores[0], np.exp(scores[0]))
    assert same.difference == 0.0 and same.p_value == 1.0


def test_clopper_pearson_hand_worked():
    # Closed forms at the edges: k = 0 -> upper = 1 - (alpha/2)^(1/n); k = n -> lower = (alpha/2)^(1/n).
    zero = statistics.binomial_ci(0, 10)
    assert zero.ci_low == 0.0 and zero.ci_high == pytest.approx(1 - 0.025 ** (1 / 10))
    full = statistics.binomial_ci(10, 10)
    assert full.ci_low == pytest.approx(0.025 ** (1 / 10)) and full.ci_high == 1.0
    # Published value for 3/10: (0.0667, 0.6525), the beta quantiles.
    three = statistics.binomial_ci(3, 10)
    assert three.ci_low == pytest.approx(stats.beta.ppf(0.025, 3, 8))
    assert three.ci_high == pytest.approx(stats.beta.ppf(0.975, 4, 7))
    assert (round(three.ci_low, 4), round(three.ci_high, 4)) == (0.0667, 0.6525)


@pytest.mark.parametrize("k, n", [(3, 10), (0, 7), (45, 50)])
def test_wilson_closed_form(k, n):
    z = stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    result = statistics.binomial_ci(k, n, method="wilson")
    assert (result.ci_low, result.ci_high) == pytest.approx((centre - half, centre + half))


def test_confusion_metrics_hand_counted():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.6, 0.7, 0.1, 0.2, 0.4, 0.5, 0.05])
    result = statistics.binary_metrics(truth, scores, threshold=0.55)
    assert (result.tp, result.fn, result.fp, result.tn) == (3, 1, 1, 5)
    assert result.sensitivity.estimate == 0.75 and result.specificity.estimate == pytest.approx(
        5 / 6
    )
    assert result.ppv.estimate == 0.75 and result.npv.estimate == pytest.approx(5 / 6)
    assert result.accuracy.estimate == 0.8 and result.accuracy.n == 10
    nothing_called = statistics.binary_metrics(truth, scores, threshold=2.0)
    assert np.isnan(nothing_called.ppv.estimate) and nothing_called.specificity.estimate == 1.0
    json.dumps(result.to_dict())


def _brute_force_threshold(truth, scores, target, on):
    best = None
    for threshold in np.r_[np.unique(scores), np.inf]:
        call = scores >= threshold
        sens = call[truth == 1].mean()
        spec = 1 - call[truth == 0].mean()
        if on == "spec" and spec >= target:
            key = (sens, spec)
        elif on == "sens" and sens >= target:
            key = (spec, sens)
        else:
            continue
        if best is None or key > best[0]:
            best = (key, sens, spec)
    return best[1], best[2]


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_threshold_matching_brute_force(target):
    truth, scores = _scored_cases(n_pos=20, n_neg=25, seed=7, decimals=1, n_scorers=1)
    at_spec = statistics.sensitivity_at_specificity(truth, scores[0], target)
    sens, spec = _brute_force_threshold(truth, scores[0], target, "spec")
    assert at_spec.sensitivity.estimate == pytest.approx(sens)
    assert at_spec.specificity.estimate == pytest.approx(spec)
    at_sens = statistics.specificity_at_sensitivity(truth, scores[0], target)
    sens, spec = _brute_force_threshold(truth, scores[0], target, "sens")
    assert at_sens.specificity.estimate == pytest.approx(spec)
    assert at_sens.sensitivity.estimate == pytest.approx(sens)


def test_mcnemar_exact_hand_worked():
    # 1 case right only by a, 6 only by b, 3 concordant: p = 2 * P(X <= 1 | 7, 1/2) = 16/128.
    a = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 0])
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    result = statistics.mcnemar(a, b)
    assert (result.only_a, result.only_b) == (1, 6)
    assert result.p_value == pytest.approx(16 / 128)
    assert statistics.mcnemar(a, a).p_value == 1.0


def test_bootstrap_ci_seeded_and_stratified():
    truth, scores = _scored_cases(n_pos=40, n_neg=60, seed=2, decimals=3, n_scorers=1)
    counts = []

    def mean_gap_and_count(t, s):
        counts.append(int(t.sum()))
        return s[t == 1].mean() - s[t == 0].mean()

    first = statistics.bootstrap_ci(mean_gap_and_count, truth, scores[0], n_boot=200, seed=4)
    assert set(counts) == {40}
    again = statistics.bootstrap_ci(mean_gap_and_count, truth, scores[0], n_boot=200, seed=4)
    other = statistics.bootstrap_ci(mean_gap_and_count, truth, scores[0], n_boot=200, seed=5)
    assert first == again and first != other
    assert first.ci_low < first.estimate < first.ci_high
    assert first.estimate == pytest.approx(scores[0, :40].mean() - scores[0, 40:].mean())


@pytest.mark.parametrize(
    "truth, message", [([0, 1, 2], "0/1"), ([1, 1, 1], "both positive and negative")]
)
def test_bad_truth_is_named(truth, message):
    with pytest.raises(ValueError, match=message):
        statistics.roc_auc_ci(truth, [0.1, 0.2, 0.3])


@pytest.mark.parametrize("alpha", [0.95, 1.5, 0.0, "0.05"])
def test_alpha_outside_zero_to_half_is_named(alpha):
    truth, scores = _scored_cases()
    calls = [
        lambda: statistics.roc_auc_ci(truth, scores[0], alpha=alpha),
        lambda: statistics.delong_test(truth, scores[0], scores[1], alpha=alpha),
        lambda: statistics.binomial_ci(3, 10, alpha=alpha),
        lambda: statistics.bootstrap_ci(
            metrics.roc_auc_score, truth, scores[0], n_boot=10, seed=0, alpha=alpha
        ),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"'alpha' is .*1 - the confidence level"):
            call()


def test_undefined_auc_standard_error_gives_no_interval():
    # One positive case: DeLong's S10 has no degrees of freedom.
    truth = np.r_[1, np.zeros(9)].astype(int)
    scores = np.linspace(0, 1, 10)[::-1]
    with pytest.warns(UserWarning, match="standard error is undefined"):
        result = statistics.roc_auc_ci(truth, scores)
    assert result.auc == 1.0
    assert np.isnan(result.std_err) and np.isnan(result.ci_low) and np.isnan(result.ci_high)


def test_strict_json_nulls_non_finite_values_and_unwraps_numpy_scalars():
    value = {"n": np.int64(3), "ok": np.bool_(True), "x": [np.nan, np.float32(np.inf), 0.5]}
    assert statistics.strict_json(value) == {"n": 3, "ok": True, "x": [None, None, 0.5]}
    json.dumps(statistics.strict_json(value), allow_nan=False)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: statistics.binomial_ci(2.7, 10), "'successes' is 2.7"),
        (lambda: statistics.binomial_ci(11, 10), "more than 'n' = 10"),
        (lambda: statistics.binomial_ci(3, -1), "'n' is -1"),
        (lambda: statistics.mcnemar([[1, 0], [0, 1]], [[1, 1], [0, 0]]), "'correct_a'"),
        (lambda: statistics.mcnemar(1, 0), "'correct_a' must be a 1-D"),
        (lambda: statistics.mcnemar([1, 0, 1], [1, 0]), "cover 3 and 2 cases"),
        (lambda: statistics.mcnemar([1, 0], [1, 0], method="yates"), "'method' is 'yates'"),
        (lambda: statistics.roc_auc_ci([1, 0, 1], [[0.1, 0.2, 0.3]] * 2), "'scores' must have 1"),
        (lambda: statistics.roc_auc_ci([1, 0, 1], [[0.1, 0.2], [0.3]]), "'scores' is not a"),
        (lambda: statistics.threshold_for_specificity([1, 0], [0.2, 0.1], 90), "'target' is 90"),
        (lambda: statistics.sensitivity_at_specificity([1, 0], [0.2, 0.1], -0.1), "'target'"),
        (
            lambda: statistics.bootstrap_ci(np.mean, [1, 0, 1], [1, 2, 3], n_boot=0, seed=0),
            "'n_boot' is 0",
        ),
        (
            lambda: statistics.bootstrap_ci(
                np.mean, [1, 0, 1], [1, 2, 3], n_boot=5, seed=0, method="studentized"
            ),
            "'method' is 'studentized'",
        ),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_mcnemar_asymptotic_and_corrected_closed_forms():
    # b = 1, c = 6 (as in the exact test above): chi2 = 25 / 7, corrected (5 - 1)^2 / 7.
    a = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 0])
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    plain = statistics.mcnemar(a, b, method="asymptotic")
    corrected = statistics.mcnemar(a, b, method="corrected")
    assert plain.statistic == pytest.approx(25 / 7)
    assert plain.p_value == pytest.approx(stats.chi2.sf(25 / 7, 1))
    assert corrected.statistic == pytest.approx(16 / 7)
    assert corrected.p_value == pytest.approx(stats.chi2.sf(16 / 7, 1))
    assert statistics.mcnemar(a, a, method="corrected").p_value == 1.0
    # With many discordant pairs the corrected chi-square approaches the exact test.
    rng = np.random.default_rng(0)
    x, y = rng.random(4000) < 0.6, rng.random(4000) < 0.57
    exact = statistics.mcnemar(x, y).p_value
    assert statistics.mcnemar(x, y, method="corrected").p_value == pytest.approx(exact, rel=0.05)


def _manual_bca(values_pos, values_neg, statistic, n_boot, alpha, rng):
    """Efron's BCa from stratified resamples and the two-sample jackknife acceleration
    (Efron & Tibshirani 1993, eq. 14.14-14.15)."""
    estimate = statistic(values_pos, values_neg)
    boot = np.array(
        [
            statistic(
                rng.choice(values_pos, values_pos.size), rng.choice(values_neg, values_neg.size)
            )
            for _ in range(n_boot)
        ]
    )
    z0 = stats.norm.ppf(np.mean(boot < estimate))
    num = den = 0.0
    for sample, other, first in ((values_pos, values_neg, True), (values_neg, values_pos, False)):
        jack = np.array(
            [
                statistic(np.delete(sample, i), other)
                if first
                else statistic(other, np.delete(sample, i))
                for i in range(sample.size)
            ]
        )
        u = (sample.size - 1) * (jack.mean() - jack)
        num += np.sum(u**3) / sample.size**3
        den += np.sum(u**2) / sample.size**2
    accel = num / (6 * den**1.5)
    z = stats.norm.ppf([alpha / 2, 1 - alpha / 2])
    levels = stats.norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z)))
    return np.quantile(boot, levels)


def test_bca_matches_a_hand_written_bca():
    rng = np.random.default_rng(1)
    truth = np.r_[np.ones(40), np.zeros(60)].astype(int)
    # Skewed scores make the BCa interval differ visibly from the percentile one.
    scores = np.where(truth == 1, rng.lognormal(0.6, 0.8, 100), rng.lognormal(0.0, 0.5, 100))

    def gap(t, s):
        return np.log(s[t == 1].mean()) - np.log(s[t == 0].mean())

    bca = statistics.bootstrap_ci(gap, truth, scores, n_boot=4000, seed=0, method="bca")
    percentile = statistics.bootstrap_ci(gap, truth, scores, n_boot=4000, seed=0)
    manual = _manual_bca(
        scores[:40], scores[40:], lambda p, n: np.log(p.mean()) - np.log(n.mean()), 4000, 0.05, rng
    )
    width = bca.ci_high - bca.ci_low
    assert (bca.ci_low, bca.ci_high) == pytest.approx(tuple(manual), abs=0.05 * width)
    assert bca.method.endswith("BCa") and bca.std_err > 0
    assert (
        abs(bca.ci_low - percentile.ci_low) > 0.002 or abs(bca.ci_high - percentile.ci_high) > 0.002
    )
