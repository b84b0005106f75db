"""Generative-quality metrics against closed forms, brute-force definitions and constructed sets."""

import numpy as np
import pytest
from scipy import linalg

from busgen_jax.evaluation import generative


def _random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _fd_closed_form(mu1, cov1, mu2, cov2):
    """Tr (C1 C2)^{1/2} = Tr (C1^{1/2} C2 C1^{1/2})^{1/2}, a symmetric PSD root (eigh)."""
    w, v = np.linalg.eigh(cov1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    return np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.sqrt(inner).sum()


def test_frechet_gaussians_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = generative.frechet_distance_gaussians(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("d", [2, 5, 16])
def test_frechet_gaussians_general_closed_form(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    cov1, cov2 = _random_spd(rng, d), _random_spd(rng, d)
    got = generative.frechet_distance_gaussians(mu1, cov1, mu2, cov2)
    assert got == pytest.approx(_fd_closed_form(mu1, cov1, mu2, cov2), rel=1e-7, abs=1e-9)


def test_frechet_distance_of_samples_converges_to_closed_form():
    rng = np.random.default_rng(0)
    d = 4
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    cov1, cov2 = _random_spd(rng, d), _random_spd(rng, d)
    x = rng.multivariate_normal(mu1, cov1, size=40_000)
    y = rng.multivariate_normal(mu2, cov2, size=40_000)
    expected = _fd_closed_form(mu1, cov1, mu2, cov2)
    assert generative.frechet_distance(x, y) == pytest.approx(expected, rel=0.03)
    assert generative.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_singular_covariance_is_finite():
    # Fewer samples than dimensions: both covariances are singular.
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 12)), rng.standard_normal((5, 12)) + 1.0
    fd = generative.frechet_distance(x, y)
    assert np.isfinite(fd) and fd > 0


def test_mmd2_unbiased_matches_brute_force():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((9, 3)) + 0.3
    k = lambda a, b: (a @ b / 3 + 1) ** 3
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
    assert generative.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_is_unbiased_for_same_distribution():
    rng = np.random.default_rng(3)
    draws, biased = [], []
    for _ in range(300):
        x, y = rng.standard_normal((40, 6)), rng.standard_normal((40, 6))
        draws.append(generative.mmd2_unbiased(x, y))
        kernel = generative.polynomial_kernel
        biased.append(kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean())
    draws, biased = np.array(draws), np.array(biased)
    std_err = draws.std(ddof=1) / np.sqrt(draws.size)
    assert abs(draws.mean()) < 4 * std_err
    # The V-statistic (diagonal kept) is biased upwards by many standard errors: the test has
    # the power to see a bias of that size.
    assert biased.mean() > 20 * std_err


def test_kernel_distance_separates_shifted_distributions_and_is_seeded():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((200, 8)), rng.standard_normal((200, 8)) + 0.5
    first = generative.kernel_distance(x, y, seed=0, num_subsets=20, subset_size=50)
    again = generative.kernel_distance(x, y, seed=0, num_subsets=20, subset_size=50)
    same = generative.kernel_distance(x, x[::-1], seed=0, num_subsets=20, subset_size=50)
    assert first == again
    assert first.subset_size == 50
    assert first.kid > 5 * first.std / np.sqrt(20) and first.kid > 10 * abs(same.kid)


def _clusters(rng, centers, n, scale=0.1, d=3):
    return np.concatenate([c + scale * rng.standard_normal((n, d)) for c in centers])


@pytest.mark.parametrize("k", [1, 3, 5])
def test_manifold_metrics_identical_sets(k):
    real = np.random.default_rng(5).standard_normal((30, 4))
    result = generative.manifold_metrics(real, real.copy(), k_pr=k, k_dc=k)
    # Each fake point is a real point: inside its own ball and its k nearest neighbours' balls.
    assert (result.precision, result.recall, result.coverage) == (1.0, 1.0, 1.0)
    assert result.density == pytest.approx((k + 1) / k)


def test_manifold_metrics_disjoint_sets():
    rng = np.random.default_rng(6)
    real, fake = _clusters(rng, [np.zeros(3)], 20), _clusters(rng, [np.full(3, 50.0)], 20)
    result = generative.manifold_metrics(real, fake)
    assert (result.precision, result.recall, result.density, result.coverage) == (0, 0, 0, 0)


@pytest.mark.parametrize("k", [2, 4])
def test_manifold_metrics_half_mode_collapse(k):
    # Real: modes A and B; fake: copies of A and a spurious mode C far from both.
    rng = np.random.default_rng(7)
    a, b, c = np.zeros(3), np.full(3, 20.0), np.full(3, -20.0)
    mode_a = _clusters(rng, [a], 10)
    real = np.concatenate([mode_a, _clusters(rng, [b], 10)])
    fake = np.concatenate([mode_a.copy(), _clusters(rng, [c], 10)])
    result = generative.manifold_metrics(real, fake, k_pr=k, k_dc=k)
    assert result.precision == 0.5 and result.recall == 0.5 and result.coverage == 0.5
    assert result.density == pytest.approx(10 * (k + 1) / (k * 20))


def test_manifold_metrics_match_brute_force_definitions():
    rng = np.random.default_rng(8)
    real, fake = rng.standard_normal((25, 3)), 0.3 + 1.2 * rng.standard_normal((30, 3))
    k = 3

    def radius(points, i):
        return sorted(np.linalg.norm(points[i] - points[j]) for j in range(len(points)))[k]

    r_real = [radius(real, i) for i in range(25)]
    r_fake = [radius(fake, j) for j in range(30)]
    inside = lambda q, c, r: np.linalg.norm(q - c) <= r
    precision = np.mean([any(inside(y, real[i], r_real[i]) for i in range(25)) for y in fake])
    recall = np.mean([any(inside(x, fake[j], r_fake[j]) for j in range(30)) for x in real])
    counts = [[inside(fake[j], real[i], r_real[i]) for i in range(25)] for j in range(30)]
    density = np.sum(counts) / (k * 30)
    coverage = np.mean(np.any(counts, axis=0))
    result = generative.manifold_metrics(real, fake, k_pr=k, k_dc=k)
    assert result.precision == pytest.approx(precision)
    assert result.recall == pytest.approx(recall)
    assert result.density == pytest.approx(density)
    assert result.coverage == pytest.approx(coverage)


def test_compare_feature_sets_reports_baseline_for_scale():
    rng = np.random.default_rng(9)
    real, fake = rng.standard_normal((120, 5)), rng.standard_normal((90, 5)) * 1.5 + 1.0
    out = generative.compare_feature_sets(real, fake, seed=0, kid_subsets=10, kid_subset_size=30)
    assert set(out) == {"real_vs_fake", "real_vs_real", "real_vs_fake_all"}
    baseline, test = out["real_vs_real"], out["real_vs_fake"]
    assert baseline["n_real"] == test["n_real"] == 60 and baseline["n_fake"] == test["n_fake"] == 60
    assert test["fd"] > 3 * baseline["fd"] and test["kid"] > baseline["kid"]
    assert test["precision"] < baseline["precision"]
    assert out["real_vs_fake_all"]["n_fake"] == 90
    # The baseline is the FD of two real halves, recomputed independently.
    order = np.random.default_rng(0).permutation(120)
    reference, held_out = real[order[:60]], real[order[60:]]
    mu1, mu2 = reference.mean(0), held_out.mean(0)
    c1, c2 = np.cov(reference, rowvar=False), np.cov(held_out, rowvar=False)
    root = np.real(linalg.sqrtm(c1 @ c2))
    fd = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * root)
    assert baseline["fd"] == pytest.approx(fd, rel=1e-8)


@pytest.mark.parametrize(
    "real, fake, match",
    [
        (np.zeros((5,)), np.zeros((5, 2)), "'real' must be a \\[N, D\\]"),
        (np.zeros((5, 2)), np.zeros((5, 3)), "'real' has 2 features, 'fake' has 3"),
        (np.zeros((5, 2)), np.full((5, 2), np.nan), "'fake' contains non-finite"),
        (np.zeros((1, 2)), np.zeros((5, 2)), "'real' has 1 rows"),
    ],
)
def test_bad_features_are_named(real, fake, match):
    with pytest.raises(ValueError, match=match):
        generative.frechet_distance(real, fake)


def test_k_too_large_is_reported():
    x = np.random.default_rng(0).standard_normal((4, 2))
    with pytest.raises(ValueError, match="'k' is 4"):
        generative.precision_recall(x, x, k=4)
