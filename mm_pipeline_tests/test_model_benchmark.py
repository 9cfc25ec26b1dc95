"""benchmarks/model_training.py on the tiny dataset: it runs, reports what it promises, and its in-memory
built-in interactions are the ones the generated dataset files hold. (Not a timing test.)"""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from benchmark_scripts import load_benchmark

from mm_pipeline.datasets import load_source, resolve_source


def _load_benchmark():
    return load_benchmark("model_training")


def test_benchmark_reports_epoch_eval_time_and_memory_for_both_models(tmp_path, capsys):
    out = tmp_path / "bench" / "models.json"
    _load_benchmark().main(
        ["--dataset", "builtin:tiny", "--epochs", "2", "--eval-repeats", "1", "--rounds", "2", "--out", str(out)]
        + ["--probe-scale", "0.01"]
    )
    report = json.loads(out.read_text())
    assert report["epochs"] == 2 and report["rounds"] == 2 and report["torch_threads"] >= 1
    assert set(report["machine"]) == {"before", "after"} and report["machine"]["after"]["scale"] == 0.01
    (entry,) = report["results"]
    assert entry["dataset"] == "builtin:tiny" and (entry["users"], entry["items"]) == (240, 360)
    assert "generated in memory" in entry["inputs"] and "random" in entry["content"]
    assert entry["valid_users"] > 0 and entry["train_interactions"] > 0
    assert set(entry["models"]) == {"mm_gcn", "lightgcn"}
    for name, m in entry["models"].items():
        assert len(m["epoch_seconds"]) == m["epochs"] == 4, name  # two rounds of two epochs: early stopping off
        assert m["epoch_seconds_median"] > 0 and len(m["eval_seconds"]) == 2 and m["eval_seconds_median"] > 0, name
        assert len(m["rounds"]) == 2 and all(r["epoch_seconds"] > 0 for r in m["rounds"]), name
        assert m["peak_rss_mb"] >= m["rss_before_mb"] > 0, name
        assert 0.0 <= m["valid_ndcg@20"] <= 1.0, name
    printed = capsys.readouterr().out
    assert "mm_gcn" in printed and "lightgcn" in printed and "peak RSS MB" in printed and "per round" in printed
    assert "machine (one thread): GEMM" in printed


def test_in_memory_builtin_interactions_match_the_generated_files(tmp_path):
    items, interactions, n_modalities, _ = _load_benchmark().builtin_tables("tiny", seed=0)
    on_disk = load_source(resolve_source("builtin:tiny", tmp_path, seed=0))
    assert n_modalities == len(on_disk.modalities) == 3
    assert list(items["item_id"]) == list(on_disk.items["item_id"])
    columns = ["user_id", "item_id", "timestamp"]
    ours = interactions[columns].sort_values(columns, ignore_index=True)
    theirs = on_disk.interactions[columns].sort_values(columns, ignore_index=True)
    pd.testing.assert_frame_equal(ours, theirs.astype(ours.dtypes.to_dict()))
    np.testing.assert_array_equal(interactions["weight"].to_numpy(), 1.0)


def test_config_compare_reports_validation_and_test_per_seed(capsys):
    module = load_benchmark("config_compare")
    settings = '{"epochs": 2, "patience": 3}'
    rows = module.main(
        ["--inputs", "builtin:tiny", "--model", "mm_gcn", "--config", settings, "--seeds", "0", "0", "1"]
    )
    assert [r["seed"] for r in rows] == [0, 0, 1]
    for row in rows:
        assert 0.0 <= row["valid_ndcg@20"] <= 1.0 and 0.0 <= row["test_recall@20"] <= 1.0
        assert row["config"] == {"epochs": 2, "patience": 3} and row["epochs_run"] == 2
    assert rows[0]["valid_ndcg@20"] == rows[1]["valid_ndcg@20"]  # seeded: the same seed, the same result
    assert rows[0]["test_recall@20"] == rows[1]["test_recall@20"]
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert printed == rows
    (freedom,) = module.main(["--inputs", "builtin:tiny", "--model", "freedom", "--config", settings])
    assert freedom["model"] == "freedom" and freedom["epochs_run"] == 2
    (vbpr,) = module.main(["--inputs", "builtin:tiny", "--model", "vbpr", "--config", settings])
    assert vbpr["model"] == "vbpr" and vbpr["epochs_run"] == 2 and 0.0 <= vbpr["test_recall@20"] <= 1.0


def test_machine_probe_measures_every_kernel_and_restores_the_thread_count():
    import torch

    machine_probe = load_benchmark("machine_probe")
    threads = torch.get_num_threads()
    figures = machine_probe.probe(scale=0.01, repeats=2)
    assert torch.get_num_threads() == threads
    assert set(figures) == {"gemm_gflops", "copy_gbps", "first_touch_gbps", "gather_ms", "spmm_ms", "scale"}
    assert all(np.isfinite(v) and v > 0 for v in figures.values())
    assert "GEMM" in machine_probe.describe(figures) and "spmm" in machine_probe.describe(figures)
    with pytest.raises(ValueError, match="scale > 0"):
        machine_probe.probe(scale=0)


def test_step_parts_times_every_variant_against_its_own_lightgcn(tmp_path, capsys):
    module = load_benchmark("step_parts")
    out = tmp_path / "steps.json"
    report = module.main(["--dataset", "builtin:tiny", "--batches", "3", "--rounds", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report, sort_keys=True))
    (entry,) = report["results"]
    variants = set(module.VARIANTS)
    assert set(entry["step_ms"]) == set(entry["ratio_to_lightgcn"]) == variants
    # Two rounds of three batches, each model's first step a warm-up; one LightGCN per variant.
    assert entry["timed_steps"] == {name: 5 for name in variants}
    assert len(entry["lightgcn_step_ms"]) == len(variants)
    assert all(ms > 0 for ms in [*entry["step_ms"].values(), *entry["lightgcn_step_ms"]])
    assert set(entry["part_cost_ms"]) == variants - {"mm_gcn"}
    base = float(np.median(entry["lightgcn_step_ms"]))
    full = entry["ratio_to_lightgcn"]["mm_gcn"]
    for name, cost in entry["part_cost_ms"].items():
        assert cost == pytest.approx((full - entry["ratio_to_lightgcn"][name]) * base)
    printed = capsys.readouterr().out
    assert "without item graph" in printed and "lightgcn (median of pairs)" in printed


def test_step_parts_switches_off_one_part_per_variant():
    module = load_benchmark("step_parts")
    data, aligned, raw, _ = module.build_inputs("builtin:tiny", 0)
    maker = module.ModelMaker(data, aligned, raw, seed=0)
    full = maker.variant("mm_gcn")
    assert full.item_adj is not None and full.align_weight > 0 and full.cold_prob > 0
    assert full.content_tower[2].p > 0
    assert maker.variant("without item graph").item_adj is None
    assert maker.variant("without alignment term").align_weight == 0
    assert maker.variant("without tower dropout").content_tower[2].p == 0
    assert maker.variant("without cold form").cold_prob == 0
    # Built from the same seed: the variants start from the same ID embeddings, the LightGCNs from one another's.
    for name in module.VARIANTS:
        assert torch.equal(maker.variant(name).item_embedding.weight, full.item_embedding.weight), name
    assert torch.equal(maker.lightgcn().lightgcn.embedding.weight, maker.lightgcn().lightgcn.embedding.weight)
