"""`bench.compare`'s pieces that decide what a side-by-side run trains and what its table says.

The run itself trains full models (`make compare`, README "Backbones and decoders");
here: each stage gets the variant's part of the recipe, and the table shows every
held-out set with its per-object-count figures and a dash where a figure is unknown.
"""

from __future__ import annotations

from bench.compare import VARIANTS, get_args_parser, markdown_table


def test_stage_one_trains_the_variants_backbone_and_stage_two_its_decoder():
    variant = VARIANTS["resnet50-soft_attention"]
    assert variant.finetune_args() == ["--backbone", "resnet50"]  # stage 1's decoder is the recipe's own
    assert variant.decoder_args() == ["--decoder", "soft_attention"]


def test_the_table_has_every_held_out_set_by_object_count_and_dashes_for_unknowns():
    metrics = {"attribute_accuracy": 0.9667, "bleu4": 0.98, "cider": 7.5,
               "by_objects": {"1": {"attribute_accuracy": 1.0}, "3": {"attribute_accuracy": 0.9118},
                              "2": {"attribute_accuracy": 0.9886}}}
    entry = {"variant": "resnet18-soft_attention", "backbone": "resnet18", "decoder": "soft_attention",
             "eval": {"own": metrics, "second_renderer": {**metrics, "attribute_accuracy": 0.9}},
             "train_s": None, "in_process_images_per_s": 20.5, "served_images_per_s": 18.1}
    header, rule, row = markdown_table([entry]).splitlines()
    assert "own attribute acc. (1 / 2 / 3 objects)" in header and "second_renderer BLEU-4" in header
    assert rule.count("---") == len(header.split("|")) - 2
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3] == "0.9667 (1.00 / 0.99 / 0.91)" and cells[6] == "0.9 (1.00 / 0.99 / 0.91)"
    assert cells[-3:] == ["-", "20.5", "18.1"]


def test_held_out_sets_and_reuse_are_options():
    args = get_args_parser().parse_args([
        "--annotations", "train.json", "--val-annotations", "val.json", "--images", "images",
        "--finetune-args", "--epochs 1", "--decoder-args", "--epochs 1",
        "--held-out", "second_renderer", "second.json", "second/images", "--reuse"])
    assert args.held_out == [["second_renderer", "second.json", "second/images"]] and args.reuse
