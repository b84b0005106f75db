"""Reader studies: file formats, rating scales, per-reader metrics, the model against each
reader (McNemar, MRMC on sensitivity), Roe-Metz simulated panels and the ROC figure."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from sklearn import metrics

from busgen_jax.evaluation import mrmc, plots, reader_io, reader_study, roe_metz


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture()
def small_study(tmp_path):
    truth = {"c1": 1, "c2": 1, "c3": 0, "c4": 0, "c5": 0}
    rows = [
        ("c1", "r1", "5"),
        ("c2", "r1", "4a"),
        ("c3", "r1", "3"),
        ("c4", "r1", "4B"),
        ("c5", "r1", "2"),
        ("c1", "r2", "4C"),
        ("c2", "r2", "3"),
        ("c3", "r2", "1"),
        ("c4", "r2", "2"),
        ("c5", "r2", "4A"),
    ]
    text = "case_id,reader_id,birads\n" + "".join(f"{c},{r},{b}\n" for c, r, b in rows)
    return reader_io.load_long_table(_write(tmp_path / "reads.csv", text), truth)


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
        ("case_id,reader_id,birads\nc1,r1,4\n", {"c1": 1}, r"reads.csv:2: field 'rating'"),
        ("case_id,reader_id,birads\nc9,r1,3\n", {"c1": 1}, r"reads.csv:2: case 'c9' has no"),
        (
            "case_id,reader_id,birads\nc1,r1,3\nc1,r1,4A\n",
            {"c1": 1},
            r"reads.csv:3: duplicate read .* \(first at .*reads.csv:2\)",
        ),
        (
            "case_id,reader_id,modality,birads\nc1,r1,a,3\nc2,r2,b,3\n",
            {"c1": 1, "c2": 0},
            "reader 'r2' has no reads in modality 'a'",
        ),
        ("case_id,rater,birads\nc1,r1,3\n", {"c1": 1}, r"missing column 'reader_id'"),
        ("case_id,reader_id,birads\nc1,r1,3\n", {"c1": 2}, "not 0 or 1"),
        ("case_id,reader_id,rating,truth\nc1,r1,3,yes\n", None, r":2: field 'truth'"),
        ("case_id,reader_id,rating,truth\nc1,r1,3,1\n", {"c1": 0}, "truth 1 here and 0 given"),
    ],
)
def test_bad_long_table_names_row_and_field(tmp_path, text, truth, message):
    with pytest.raises(ValueError, match=message):
        reader_io.load_long_table(_write(tmp_path / "reads.csv", text), truth)


def test_numeric_scales_either_direction_and_missing_reads(tmp_path):
    # MRMCaov's column names, 0-100 probability ratings, a missing read of c3 by r2.
    text = (
        "reader,treatment,case,truth,rating\n"
        "r1,A,c1,1,80\nr1,A,c2,1,30\nr1,A,c3,0,10\nr1,A,c4,0,40\n"
        "r2,A,c1,1,90\nr2,A,c2,1,60\nr2,A,c4,0,20\n"
    )
    path = _write(tmp_path / "reads.csv", text)
    scale = reader_study.RatingScale("numeric", threshold=35)
    study = reader_io.load_long_table(path, scale=scale)
    assert study.modalities == ("A",) and study.case_ids == ("c1", "c2", "c3", "c4")
    assert np.isnan(study.scores[0, 1, 2]) and study.scores[0, 0, 0] == 80
    r1, r2 = reader_study.reader_performance(study)
    assert (r1.sensitivity.estimate, r1.specificity.estimate) == (0.5, 0.5)
    assert r2.n_cases == 3 and (r2.sensitivity.estimate, r2.specificity.estimate) == (1.0, 1.0)
    # Reversed: a rank where 1 is the most suspicious; a rank <= 2 is a positive call.
    ranks = _write(
        tmp_path / "ranks.csv",
        "case_id,reader_id,rating,truth\nc1,r1,1,1\nc2,r1,3,1\nc3,r1,4,0\nc4,r1,2,0\n",
    )
    reversed_scale = reader_study.RatingScale("numeric", higher_is_malignant=False, threshold=2)
    ranked = reader_io.load_long_table(ranks, scale=reversed_scale)
    (performance,) = reader_study.reader_performance(ranked)
    assert performance.auc == pytest.approx(metrics.roc_auc_score([1, 1, 0, 0], [-1, -3, -4, -2]))
    assert (performance.sensitivity.estimate, performance.specificity.estimate) == (0.5, 0.5)
    assert reversed_scale.call_rule() == "rating <= 2" and scale.call_rule() == "rating >= 35"
    assert reader_study.BIRADS.call_rule("4c") == "BI-RADS >= 4C"
    ranked.write_csv(tmp_path / "again.csv")
    again = reader_io.load_long_table(tmp_path / "again.csv", scale=reversed_scale)
    np.testing.assert_array_equal(again.scores, ranked.scores)


def _formats(tmp_path, study):
    """The same numeric study written as iMRMC and as RJafroc CSV sheets."""
    lines = ["iMRMC test", "NR: 3", "N0: x", "N1: y", "NM: 2", "BEGIN DATA:"]
    lines += [f"-1,{c},0,{t}" for c, t in zip(study.case_ids, study.truth, strict=True)]
    folder = tmp_path / "jafroc"
    folder.mkdir()
    truth_rows = ["CaseID,LesionID,Weight"]
    truth_rows += [f"{c},{t},{t}" for c, t in zip(study.case_ids, study.truth, strict=True)]
    fp, tp = (
        ["ReaderID,ModalityID,CaseID,FP_Rating"],
        ["ReaderID,ModalityID,CaseID,LesionID,TP_Rating"],
    )
    for m, modality in enumerate(study.modalities):
        for r, reader in enumerate(study.reader_ids):
            for c, case in enumerate(study.case_ids):
                score = study.scores[m, r, c]
                lines.append(f"{reader},{case},{modality},{score:g}")
                if study.truth[c]:
                    tp.append(f"{reader},{modality},{case},1,{score:g}")
                else:
                    fp.append(f"{reader},{modality},{case},{score:g}")
    (tmp_path / "study.imrmc").write_text("\n".join(lines) + "\n")
    for name, rows in (("Truth", truth_rows), ("FP", fp), ("TP", tp)):
        (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "study.imrmc", folder


def _write_xlsx(path, folder):
    """An .xlsx workbook holding the CSV sheets of `folder`, written part by part as spreadsheet
    programs do: text cells through the shared-string table, numbers as values."""
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    strings, sheets = [], []
    for k, csv_path in enumerate(sorted(folder.glob("*.csv")), start=1):
        rows = [line.split(",") for line in csv_path.read_text().splitlines()]
        xml_rows = []
        for i, row in enumerate(rows, start=1):
            cells = []
            for j, value in enumerate(row):
                ref = f"{chr(65 + j)}{i}"
                try:
                    cells.append(f'<c r="{ref}"><v>{float(value)}</v></c>')
                except ValueError:
                    strings.append(value)
                    cells.append(f'<c r="{ref}" t="s"><v>{len(strings) - 1}</v></c>')
            xml_rows.append(f'<row r="{i}">{"".join(cells)}</row>')
        sheets.append((csv_path.stem.upper(), f"rId{k}", "".join(xml_rows)))
    with zipfile.ZipFile(path, "w") as book:
        book.writestr(
            "xl/workbook.xml",
            f'<workbook xmlns="{main}" xmlns:r="{rel}"><sheets>'
            + "".join(
                f'<sheet name="{n}" sheetId="{i + 1}" r:id="{r}"/>'
                for i, (n, r, _) in enumerate(sheets)
            )
            + "</sheets></workbook>",
        )
        book.writestr(
            "xl/_rels/workbook.xml.rels",
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            + "".join(
                f'<Relationship Id="{r}" Target="worksheets/sheet{i + 1}.xml"/>'
                for i, (_, r, _) in enumerate(sheets)
            )
            + "</Relationships>",
        )
        book.writestr(
            "xl/sharedStrings.xml",
            f'<sst xmlns="{main}">' + "".join(f"<si><t>{t}</t></si>" for t in strings) + "</sst>",
        )
        for i, (_, _, rows) in enumerate(sheets):
            book.writestr(
                f"xl/worksheets/sheet{i + 1}.xml",
                f'<worksheet xmlns="{main}"><sheetData>{rows}</sheetData></worksheet>',
            )
    return path


def test_imrmc_and_rjafroc_give_the_same_study_and_analysis(tmp_path):
    study = roe_metz.simulate_panel(
        (np.arange(40) % 3 == 0).astype(int), n_readers=3, seed=0, modalities=("A", "B")
    )
    imrmc, folder = _formats(tmp_path, study)
    workbook = _write_xlsx(tmp_path / "study.xlsx", folder)
    scale = reader_study.RatingScale("numeric", threshold=4)
    for fmt, path in (("imrmc", imrmc), ("rjafroc", folder), ("rjafroc", workbook)):
        loaded = reader_io.load(path, fmt, scale=scale)
        order = [loaded.case_ids.index(c) for c in study.case_ids]
        np.testing.assert_array_equal(loaded.scores[..., order], study.scores)
        np.testing.assert_array_equal(loaded.truth[order], study.truth)
        assert loaded.modalities == ("A", "B") and loaded.reader_ids == study.reader_ids
        direct = mrmc.or_modalities(study.truth, study.scores, modalities=("A", "B"))
        again = mrmc.or_modalities(loaded.truth, loaded.scores, modalities=loaded.modalities)
        assert again.rrrc.p_value == pytest.approx(direct.rrrc.p_value, rel=1e-12)
    with pytest.raises(ValueError, match=r"study.imrmc:7: truth score"):
        imrmc.write_text(imrmc.read_text().replace("-1,case0000,0,1", "-1,case0000,0,2"))
        reader_io.load(imrmc, "imrmc")
    (folder / "FP.csv").unlink()
    with pytest.raises(ValueError, match="no FP or NL sheet"):
        reader_io.load(folder, "rjafroc")
    with pytest.raises(ValueError, match="an .xlsx workbook or a folder of CSV sheets"):
        reader_io.load(imrmc, "rjafroc")
    with pytest.raises(ValueError, match="not an .xlsx workbook"):
        reader_io.load(imrmc.rename(tmp_path / "fake.xlsx"), "rjafroc")
    with pytest.raises(ValueError, match="format 'excel' is not one of"):
        reader_io.load(folder, "excel")


def _panel(n=300, n_readers=9, seed=0, modalities=None, **kwargs):
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.4).astype(int)
    study = roe_metz.simulate_panel(
        truth, n_readers=n_readers, seed=seed, modalities=modalities, **kwargs
    )
    return study, rng


def test_roe_metz_moments_match_the_model():
    # Hillis (2012): benign Y ~ N(R0, 1 + var_r + var_tr), malignant N(delta, (1 + ...) / b^2)
    # over readers and cases; the two modalities share C and RC, not TC or E.
    params = roe_metz.RoeMetz()
    truth = np.r_[np.ones(200), np.zeros(300)].astype(int)
    rng = np.random.default_rng(0)
    y = roe_metz.simulate_ratings(rng, truth, params, n_readers=4, n_modalities=2, size=(300,))
    total = 1 + params.var_r + params.var_tr
    benign, malignant = y[..., truth == 0], y[..., truth == 1]
    assert benign.mean() == pytest.approx(0, abs=0.03)
    assert malignant.mean() == pytest.approx(params.delta, abs=0.04)
    assert benign.var() == pytest.approx(total, rel=0.03)
    assert malignant.var() == pytest.approx(total / params.b**2, rel=0.03)
    cross = np.mean((benign[:, 0] - benign[:, 0].mean()) * (benign[:, 1] - benign[:, 1].mean()))
    expected = params.var_c + params.var_rc + params.var_r
    assert cross == pytest.approx(expected, abs=0.03)


def test_simulated_panel_behaves_like_breast_ultrasound_readers():
    study, _ = _panel(n=400)
    performance = reader_study.reader_performance(study)
    sens = np.array([p.sensitivity.estimate for p in performance])
    spec = np.array([p.specificity.estimate for p in performance])
    auc = np.array([p.auc for p in performance])
    assert len(performance) == 9 and study.simulated
    assert 0.8 <= sens.mean() <= 0.95 and 0.4 <= spec.mean() <= 0.7
    assert 0.78 <= auc.mean() <= 0.92
    # Visible reader-to-reader spread, never degenerate operating points.
    assert np.ptp(spec) > 0.1 and np.ptp(sens) > 0.05
    assert sens.max() < 1 and spec.min() > 0.2
    assert set(np.unique(study.scores)) <= set(range(1, 8))  # never BI-RADS 6


def test_simulated_readers_miss_dcis_more_than_invasive_cancer():
    rng = np.random.default_rng(1)
    truth = (rng.random(600) < 0.5).astype(int)
    dcis = (truth == 1) & (rng.random(600) < 0.5)
    study = roe_metz.simulate_panel(truth, n_readers=9, seed=1, dcis=dcis)
    calls = study.calls()
    # Phi((delta - dcis_shift - cut) b / s) against Phi((delta - cut) b / s): about 0.06 apart.
    assert calls[:, dcis].mean() < calls[:, (truth == 1) & ~dcis].mean() - 0.03


def test_case_score_sets_the_case_difficulty():
    # Readers agree with the latent score within each class: the case effect is its logit.
    rng = np.random.default_rng(2)
    truth = (rng.random(400) < 0.4).astype(int)
    latent = 1 / (1 + np.exp(-(rng.normal(size=400) + 2 * truth - 1)))
    study = roe_metz.simulate_panel(truth, seed=2, case_score=latent)
    mean_rating = study.scores[0].mean(axis=0)
    for label in (0, 1):
        rho = stats.spearmanr(mean_rating[truth == label], latent[truth == label]).statistic
        assert rho > 0.5
    assert roe_metz.simulate_panel(truth, seed=2, case_score=latent).scores.tobytes() == (
        study.scores.tobytes()
    )


def test_simulated_study_round_trips_with_its_marker(tmp_path):
    study, _ = _panel(n=160, n_readers=4, modalities=("unaided", "aided"), seed=4)
    study.write_csv(tmp_path / "sim.csv")
    loaded = reader_io.load_long_table(tmp_path / "sim.csv")
    assert loaded.simulated and loaded.modalities == ("unaided", "aided")
    np.testing.assert_array_equal(loaded.scores, study.scores)
    np.testing.assert_array_equal(loaded.truth, study.truth)
    assert all(p.simulated for p in reader_study.reader_performance(loaded, modality="aided"))


def test_modality_gain_improves_readers():
    params = roe_metz.RoeMetz(modality_gain=0.5)
    study, _ = _panel(modalities=("unaided", "aided"), params=params, seed=5)
    aucs = {
        m: [p.auc for p in reader_study.reader_performance(study, modality=m)]
        for m in study.modalities
    }
    assert np.mean(aucs["aided"]) > np.mean(aucs["unaided"])


def test_model_vs_readers_brute_force():
    study, rng = _panel(n=200, n_readers=5, seed=6)
    truth = study.truth
    model = study.scores[0].mean(axis=0) + 0.8 * truth + rng.normal(size=truth.size)
    result = reader_study.compare_model_to_readers(study, model)
    calls = study.calls()
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
        only_model = int(np.sum(model_right & ~reader_right))
        only_reader = int(np.sum(reader_right & ~model_right))
        mcnemar = comparison.mcnemar_at_spec
        assert (mcnemar.only_a, mcnemar.only_b) == (only_model, only_reader)
        n = only_model + only_reader
        tail = sum(stats.binom.pmf(k, n, 0.5) for k in range(min(only_model, only_reader) + 1))
        assert mcnemar.p_value == pytest.approx(min(1.0, 2 * tail))
        gains.append(best[0] - np.mean(calls[r][truth == 1]))
    assert result.mean_sensitivity_gain == pytest.approx(np.mean(gains))
    # The p-value is the OR MRMC test of the sensitivities at the matched thresholds.
    or_test = mrmc.or_model_vs_readers(
        truth,
        model,
        study.scores[0],
        fom="sensitivity",
        reader_thresholds=4,
        model_thresholds=[c.threshold_at_spec for c in result.readers],
    )
    assert result.sensitivity_gain_p == pytest.approx(or_test.rrrc.p_value)
    assert result.sensitivity_gain_ci == pytest.approx((or_test.rrrc.ci_low, or_test.rrrc.ci_high))
    assert np.isfinite(result.sensitivity_gain_p) and 0 < result.sensitivity_gain_p < 1


def test_model_vs_readers_with_missing_reads_uses_each_readers_cases():
    study, rng = _panel(n=200, n_readers=4, seed=7)
    scores = study.scores.copy()
    scores[0, 1, :60] = np.nan  # reader 1 did not read the first 60 cases
    partial = reader_study.ReaderStudy(
        study.case_ids, study.reader_ids, study.modalities, scores, study.truth, True
    )
    model = study.scores[0].mean(axis=0) + rng.normal(size=200)
    result = reader_study.compare_model_to_readers(partial, model, mcnemar_method="corrected")
    alone = reader_study.ReaderStudy(
        study.case_ids[60:],
        study.reader_ids[1:2],
        study.modalities,
        study.scores[:, 1:2, 60:],
        study.truth[60:],
        True,
    )
    expected = reader_study.compare_model_to_readers(alone, model[60:], mcnemar_method="corrected")
    assert result.readers[1] == expected.readers[0]
    assert "continuity correction" in result.mcnemar_method


def test_model_scores_by_case_id_must_cover_every_case(small_study):
    scores = dict(zip(small_study.case_ids, [0.9, 0.8, 0.2, 0.4, 0.1], strict=True))
    by_id = reader_study.compare_model_to_readers(small_study, scores)
    by_order = reader_study.compare_model_to_readers(small_study, list(scores.values()))
    assert json.dumps(by_id.to_dict()) == json.dumps(by_order.to_dict())
    del scores["c3"]
    with pytest.raises(ValueError, match="no score for case"):
        reader_study.compare_model_to_readers(small_study, scores)


def test_roc_plot_is_written(tmp_path):
    study, rng = _panel(n=100, n_readers=3, seed=3)
    points = {
        p.reader_id: (p.sensitivity.estimate, p.specificity.estimate)
        for p in reader_study.reader_performance(study)
    }
    path = tmp_path / "roc.png"
    model = study.truth + rng.normal(size=100)
    plots.plot_roc_with_readers(path, model, study.truth, points, simulated=True, dpi=50)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (250, 250)
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # not a blank canvas


@pytest.mark.slow
@pytest.mark.parametrize("positive", [("dcis",), ("malignant", "dcis")])
def test_phantom_panel_lands_in_breast_ultrasound_ranges(positive):
    # The demo's task is benign vs DCIS; the phantom's latent score sets each case's difficulty.
    from busgen_jax.data import phantom

    batch = phantom.generate(300, seed=0, image_size=16)
    pathology = np.asarray(batch["pathology"])
    keep = np.isin(pathology, ("benign", *positive))
    truth = np.isin(pathology[keep], positive).astype(int)
    latent = np.asarray(batch["malignancy_score"])[keep]
    study = roe_metz.simulate_panel(
        truth, seed=0, case_score=latent, dcis=pathology[keep] == "dcis"
    )
    performance = reader_study.reader_performance(study)
    sens = np.array([p.sensitivity.estimate for p in performance])
    spec = np.array([p.specificity.estimate for p in performance])
    assert len(performance) == 9
    assert 0.75 <= sens.mean() <= 0.95 and 0.4 <= spec.mean() <= 0.7
    assert sens.max() < 1 and np.ptp(spec) > 0.1
    # The latent score as a model: a non-degenerate comparison with a finite MRMC p-value.
    comparison = reader_study.compare_model_to_readers(study, latent)
    assert 0 < comparison.sensitivity_gain_p < 1
    assert comparison.sensitivity_gain_ci[0] < comparison.sensitivity_gain_ci[1]
