"""The diversity metrics of `training.evaluate` on hand-made captions, and one tiny evaluation run."""

import json

import pytest

from training import evaluate
from training.evaluate import distinct_n, diversity_metrics, mbleu4, sentence_bleu4
from training.shapes_dataset import generate
from tests.helpers import write_tiny_export

RED = "there is a large red circle in the middle of the picture".split()
BLUE = "there is a small blue square on the left of the image".split()
RED_AGAIN = "there is a large red circle on the left of the image".split()


def test_distinct_n_counts_repeated_words_and_pairs():
    assert distinct_n([["a", "red", "circle"], ["a", "blue", "circle"]], 1) == pytest.approx(4 / 6)
    assert distinct_n([["a", "red", "circle"], ["a", "blue", "circle"]], 2) == pytest.approx(4 / 4)
    assert distinct_n([["a", "red", "circle"]] * 3, 2) == pytest.approx(2 / 6)
    assert distinct_n([["a"]], 2) == 0.0


def test_mbleu4_is_one_for_copies_and_lower_for_different_captions():
    assert mbleu4([RED, RED, RED]) == pytest.approx(1.0)
    assert mbleu4([RED, BLUE]) < mbleu4([RED, RED_AGAIN]) < 1.0
    assert mbleu4([RED]) is None


def test_sentence_bleu4_scores_each_hypothesis_against_its_own_references():
    scores = sentence_bleu4([RED, BLUE], [[RED], [RED]])
    assert scores[0] == pytest.approx(1.0) and scores[1] < 0.1


def test_diversity_metrics_take_the_best_of_n_as_the_oracle():
    references = {1: [" ".join(RED)], 2: [" ".join(BLUE)]}
    scenes = {1: [{"color": "red", "shape": "circle"}], 2: [{"color": "blue", "shape": "square"}]}
    predictions = {1: [BLUE, RED], 2: [BLUE, BLUE]}
    metrics = diversity_metrics(predictions, references, scenes)
    assert metrics["oracle_bleu4"] == pytest.approx(1.0, abs=1e-3), "RED for image 1, BLUE for image 2"
    assert metrics["oracle_attribute_accuracy"] == 1.0
    assert metrics["attribute_accuracy_all"] == 0.75  # 3 of the 4 captions name their scene
    assert metrics["mbleu4"] == pytest.approx((mbleu4([BLUE, RED]) + 1.0) / 2, abs=1e-4)
    assert metrics["distinct1"] == pytest.approx((distinct_n([BLUE, RED], 1) + distinct_n([BLUE, BLUE], 1)) / 2,
                                                 abs=1e-4)
    assert metrics["captions_per_image"] == 2


def test_evaluate_cli_scores_several_sampled_captions(tmp_path, capsys):
    data = generate(tmp_path / "shapes", train=1, val=4, seed=5, canvas=64)
    export = write_tiny_export(tmp_path / "export", seed=2)
    args = evaluate.get_args_parser().parse_args([
        "--export-dir", str(export), "--annotations", str(data / "annotations" / "captions_val.json"),
        "--images", str(data / "images"), "--device", "cpu", "--quiet",
        "--do-sample", "--temperature", "1.5", "--num-captions", "3", "--seed", "4",
    ])
    metrics = evaluate.main(args)
    assert metrics["decoding"] == "sample(t=1.5,k=0,p=1.0)" and metrics["num_captions"] == 3
    assert {"distinct1", "distinct2", "mbleu4", "oracle_bleu4", "oracle_attribute_accuracy",
            "attribute_accuracy_all"} <= set(metrics)
    assert evaluate.main(args)["mbleu4"] == metrics["mbleu4"], "a seed makes the run repeat"


def test_the_diversity_table_scores_every_setting_and_sampling_is_more_diverse_than_beams(tmp_path, capsys):
    from training import diversity_table

    data = generate(tmp_path / "shapes", train=1, val=4, seed=6, canvas=64)
    export = write_tiny_export(tmp_path / "export", seed=3)
    args = diversity_table.get_args_parser().parse_args([
        "--export-dir", str(export), "--annotations", str(data / "annotations" / "captions_val.json"),
        "--images", str(data / "images"), "--device", "cpu", "--out", str(tmp_path / "diversity.json"),
    ])
    rows = dict(diversity_table.main(args))
    assert len(rows) == 7 and rows["greedy"]["num_captions"] == 1
    table = capsys.readouterr().out.strip().splitlines()[-9:]
    assert table[0].startswith("| decoding | captions | BLEU-4") and len(table) == 9
    hot = rows["sampling, temperature 1.0, n = 5"]
    assert hot["captions_per_image"] > 1 and hot["distinct2"] is not None
    written = json.loads((tmp_path / "diversity.json").read_text())
    assert [row["setting"] for row in written["rows"]] == list(rows)
