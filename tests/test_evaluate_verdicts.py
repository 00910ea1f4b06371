"""The verdict rules: targets from the design, n/a when a comparison has no meaning."""

from __future__ import annotations

from ctsynth.evaluate import verdicts


def test_fidelity_rule_is_twice_the_baseline():
    base = {"frechet_distance": 10.0, "mmd": 0.1, "precision": 0.8, "recall": 0.8, "density": 1.0, "coverage": 0.8}
    good = dict(base, frechet_distance=19.0, mmd=0.15)
    bad = dict(base, frechet_distance=21.0, mmd=0.25, recall=0.5)
    assert {r["verdict"] for r in verdicts.fidelity_rows("radiomics", good, base)} == {"pass"}
    rows = {r["metric"]: r["verdict"] for r in verdicts.fidelity_rows("radiomics", bad, base)}
    assert rows["Frechet distance [radiomics]"] == "fail" and rows["MMD (RBF) [radiomics]"] == "fail"
    assert rows["recall [radiomics]"] == "fail" and rows["precision [radiomics]"] == "pass"


def test_memorisation_allows_at_most_one_percent():
    memo = {"ncc": {"fraction_flagged": 0.02, "held_out_fraction_above": 0.0, "threshold": 0.9}}
    assert verdicts.memorisation_rows(memo)[0]["verdict"] == "fail"
    memo["ncc"]["fraction_flagged"] = 0.01
    assert verdicts.memorisation_rows(memo)[0]["verdict"] == "pass"


def test_usefulness_needs_a_real_classifier_better_than_chance():
    util = {"available": True, "auc_real": {"auc": 0.9, "ci95": [0.8, 0.97]},
            "auc_synthetic": {"auc": 0.86, "ci95": [0.7, 0.95]},
            "auc_real_plus_synthetic": {"auc": 0.92, "ci95": [0.8, 0.99]},
            "class_consistency": 0.9, "real_accuracy_held_out": 0.85}
    rows = {r["metric"]: r["verdict"] for r in verdicts.utility_rows(util)}
    assert rows == {"AUC trained on synthetic (TSTR)": "pass", "AUC trained on real + synthetic": "pass",
                    "class consistency": "pass"}
    util["auc_synthetic"]["auc"] = 0.84  # < 0.95 x 0.9
    assert verdicts.utility_rows(util)[0]["verdict"] == "fail"
    util["auc_real"] = {"auc": 0.6, "ci95": [0.3, 0.85]}
    assert {r["verdict"] for r in verdicts.utility_rows(util)} == {"n/a"}
    assert verdicts.utility_rows({"available": False, "reason": "no labels"})[0]["verdict"] == "n/a"


def test_diversity_rule():
    assert verdicts.diversity_row(1.0, 0.6)["verdict"] == "fail"
    assert verdicts.diversity_row(0.75, 0.6)["verdict"] == "pass"  # 0.25 >= 0.4 / 2
    assert verdicts.diversity_row(0.85, 0.6)["verdict"] == "fail"
