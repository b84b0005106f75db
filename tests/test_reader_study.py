"""Reader-study loading, per-reader metrics, model-vs-reader comparisons, simulation and plot."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from sklearn import metrics

from busgen_jax.evaluation import plots, reader_study


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture()
def small_study(tmp_path):
    truth = {"c1": 1, "c2": 1, "c3": 0, "c4": 0, "c5": 0}
    rows = [
        ("c1", "r1", "5"), ("c2", "r1", "4a"), ("c3", "r1", "3"), ("c4", "r1", "4B"),
        ("c5", "r1", "2"), ("c1", "r2", "4C"), ("c2", "r2", "3"), ("c3", "r2", "1"),
        ("c4", "r2", "2"), ("c5", "r2", "4A"),
    ]  # fmt: skip
    text = "case_id,reader_id,birads\n" + "".join(f"{c},{r},{b}\n" for c, r, b in rows)
    return reader_study.load_reader_study(_write(tmp_path / "reads.csv", text), truth)


def test_birads_scores_are_ordinal():
    scores = [reader_study.birads_score(c) for c in ("1", "2", "3", "4a", "4B", "4c", 5, "6")]
    assert scores == list(range(1, 9))
    with pytest.raises(ValueError, match="BI-RADS '4' is not one of"):
        reader_study.birads_score("4")


def test_reader_performance_hand_counted(small_study):
    r1, r2 = reader_study.reader_performance(small_study)
    # Reader 1 at >= 4A: calls c1, c2 (both malignant) and c4 (benign): sens 2/2, spec 2/3.
    assert (r1.sensitivity.successes, r1.sensitivity.n) == (2, 2)
    assert (r1.specificity.successes, r1.specificity.n) == (2, 3)
    # Reader 2 calls c1 and c5: sens 1/2, spec 2/3.
    assert r2.sensitivity.estimate == 0.5 and r2.specificity.estimate == pytest.approx(2 / 3)
    truth = [1, 1, 0, 0, 0]
    assert r1.auc == pytest.approx(metrics.roc_auc_score(truth, [7, 4, 3, 5, 2]))
    assert r2.auc == pytest.approx(metrics.roc_auc_score(truth, [6, 3, 1, 2, 4]))
    assert (r1.roc_fpr[0], r1.roc_tpr[-1]) == (0.0, 1.0)
    # A stricter threshold (4C) removes reader 1's 4A and 4B calls.
    strict = reader_study.reader_performance(small_study, threshold="4C")[0]
    assert strict.sensitivity.estimate == 0.5 and strict.specificity.estimate == 1.0


@pytest.mark.parametrize(
    "text, truth, message",
    [
        ("case_id,reader_id,birads\nc1,r1,4\n", {"c1": 1}, r"reads.csv:2: field 'birads'"),
        ("case_id,reader_id,birads\nc9,r1,3\n", {"c1": 1}, r"reads.csv:2: field 'case_id' 'c9'"),
        (
            "case_id,reader_id,birads\nc1,r1,3\nc1,r1,4A\n",
            {"c1": 1},
            r"reads.csv:3: duplicate read .* \(first on line 2\)",
        ),
        ("case_id,reader_id,birads\nc1,r1,3\nc2,r2,3\n", {"c1": 1, "c2": 0}, "no read of case"),
        ("case_id,reader,birads\nc1,r1,3\n", {"c1": 1}, r"missing column\(s\) \['reader_id'\]"),
        ("case_id,reader_id,birads\nc1,r1,3\n", {"c1": 2}, "not 0 or 1"),
    ],
)
def test_bad_csv_names_row_and_field(tmp_path, text, truth, message):
    with pytest.raises(ValueError, match=message):
        reader_study.load_reader_study(_write(tmp_path / "reads.csv", text), truth)


def _simulated(n=160, n_readers=4, seed=0, modalities=("unaided", "aided")):
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.4).astype(int)
    latent = 1 / (1 + np.exp(-(1.3 * rng.normal(size=n) + 3.0 * truth - 3.0)))
    study = reader_study.simulate_reader_study(
        truth, latent, n_readers=n_readers, seed=seed, modalities=modalities
    )
    return study, latent, rng


def test_simulated_study_round_trips_with_its_marker(tmp_path):
    study, _, _ = _simulated()
    again, _, _ = _simulated()
    np.testing.assert_array_equal(study.scores, again.scores)
    assert study.simulated and all(row["simulated"] for row in study.to_rows())
    assert set(np.unique(study.scores)) <= set(range(1, 8))  # never BI-RADS 6
    study.write_csv(tmp_path / "sim.csv")
    truth = dict(zip(study.case_ids, study.truth.tolist(), strict=True))
    loaded = reader_study.load_reader_study(tmp_path / "sim.csv", truth)
    assert loaded.simulated and loaded.modalities == ("unaided", "aided")
    np.testing.assert_array_equal(loaded.scores, study.scores)
    performance = reader_study.reader_performance(loaded, modality="aided")
    assert all(p.simulated for p in performance)


def test_simulated_aid_improves_readers():
    study, _, _ = _simulated(n=300, n_readers=8, seed=1)
    aucs = {
        m: [p.auc for p in reader_study.reader_performance(study, modality=m)]
        for m in study.modalities
    }
    assert np.mean(aucs["aided"]) > np.mean(aucs["unaided"])
    # Reader-specific thresholds spread the operating points.
    specs = [
        p.specificity.estimate for p in reader_study.reader_performance(study, modality="aided")
    ]
    assert np.ptp(specs) > 0.02


def test_model_vs_readers_brute_force():
    study, latent, rng = _simulated(n=120, n_readers=5, seed=2)
    model = latent + 0.1 * rng.normal(size=latent.size)
    result = reader_study.compare_model_to_readers(study, model, modality="unaided")
    assert result.simulated and len(result.readers) == 5
    truth, calls = study.truth, study.calls("4A", "unaided")
    gains = []
    for r, comparison in enumerate(result.readers):
        reader_spec = np.mean(calls[r][truth == 0] == 0)
        # Brute force: the most sensitive model threshold whose specificity is >= the reader's.
        best = max(
            (np.mean(model[truth == 1] >= t), t)
            for t in np.unique(model)
            if np.mean(model[truth == 0] < t) >= reader_spec
        )
        assert comparison.model_sensitivity_at_spec.estimate == pytest.approx(best[0])
        model_right = model[truth == 1] >= comparison.threshold_at_spec
        reader_right = calls[r][truth == 1] == 1
        only_model = sum(m and not h for m, h in zip(model_right, reader_right, strict=True))
        only_reader = sum(h and not m for m, h in zip(model_right, reader_right, strict=True))
        assert (comparison.mcnemar_at_spec.only_a, comparison.mcnemar_at_spec.only_b) == (
            only_model,
            only_reader,
        )
        n = only_model + only_reader
        tail = sum(stats.binom.pmf(k, n, 0.5) for k in range(min(only_model, only_reader) + 1))
        assert comparison.mcnemar_at_spec.p_value == pytest.approx(min(1.0, 2 * tail))
        gains.append(best[0] - np.mean(calls[r][truth == 1]))
    gains = np.array(gains)
    t_value = gains.mean() / (gains.std(ddof=1) / np.sqrt(gains.size))
    assert result.mean_sensitivity_gain == pytest.approx(gains.mean())
    assert result.sensitivity_gain_p == pytest.approx(2 * stats.t.sf(abs(t_value), gains.size - 1))


def test_model_scores_by_case_id_must_cover_every_case(small_study):
    scores = dict(zip(small_study.case_ids, [0.9, 0.8, 0.2, 0.4, 0.1], strict=True))
    by_id = reader_study.compare_model_to_readers(small_study, scores)
    by_order = reader_study.compare_model_to_readers(small_study, list(scores.values()))
    assert json.dumps(by_id.to_dict()) == json.dumps(by_order.to_dict())
    del scores["c3"]
    with pytest.raises(ValueError, match="no score for case"):
        reader_study.compare_model_to_readers(small_study, scores)


def test_roc_plot_is_written(tmp_path):
    study, latent, _ = _simulated(n=100, n_readers=3, seed=3, modalities=None)
    points = {
        p.reader_id: (p.sensitivity.estimate, p.specificity.estimate)
        for p in reader_study.reader_performance(study)
    }
    path = tmp_path / "roc.png"
    plots.plot_roc_with_readers(path, latent, study.truth, points, simulated=True, dpi=50)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (250, 250)
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # not a blank canvas
