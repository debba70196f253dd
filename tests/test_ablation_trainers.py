"""The ablation trainers (one per row of Tables 5-7) and the collector of their results into the paper's tables."""
import argparse
import gc
import json
import os
import shutil
import textwrap

import numpy as np
import pytest
import torch

from danie_nnunet.ablation_table import (ABLATION_TRAINERS, PAPER, TABLES, AblationTableError, collect_results,
                                         format_tables, register, row_costs)
from danie_nnunet.config import ABLATION_SWITCHES, get_config
from nnunet_helpers import DATASET, DATASET_NAME, nnunet


def test_one_trainer_per_row_named_like_the_table():
    from danie_nnunet.trainers import ABLATION_TRAINER_CLASSES, TRAINERS
    assert {cls.danie_variant: cls.__name__ for cls in ABLATION_TRAINER_CLASSES} == ABLATION_TRAINERS
    assert set(ABLATION_TRAINERS) == set(ABLATION_SWITCHES) == set(PAPER)
    assert sorted(r for _, rows in TABLES.values() for r in rows) == sorted(ABLATION_TRAINERS)
    for row, name in ABLATION_TRAINERS.items():
        assert name.startswith(f"DANIETrainer_{row.replace('.', '')}_")
    assert all(cls in TRAINERS for cls in ABLATION_TRAINER_CLASSES)  # re-exported through nnunet_ext


@pytest.mark.e2e
def test_stock_lookup_finds_every_ablation_trainer(trained, monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from danie_nnunet.trainers import ABLATION_TRAINER_CLASSES
    monkeypatch.setenv("nnUNet_extTrainer", trained["env"]["nnUNet_extTrainer"])
    for trainer in ABLATION_TRAINER_CLASSES:
        assert recursive_find_trainer_class_by_name(trainer.__name__) is trainer


@pytest.fixture(scope="module")
def nnunet_inputs(trained, tmp_path_factory):
    """Plans, dataset.json and one real training batch of the tiny dataset; results go to a scratch folder."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    pre = trained["preprocessed"]
    env = {"nnUNet_raw": trained["env"]["nnUNet_raw"], "nnUNet_preprocessed": trained["env"]["nnUNet_preprocessed"],
           "nnUNet_results": str(tmp_path_factory.mktemp("ablation_results")), "nnUNet_n_proc_DA": "0"}
    return dict(env=env, plans=load_json(os.path.join(pre, "nnUNetPlans.json")),
                dataset_json=load_json(os.path.join(pre, "dataset.json")))


@pytest.fixture
def one_thread():
    """Fourteen DANIE-L steps are many short parallel regions: on a busy 2-core machine two OpenMP threads wait on
    each other and run about 10x slower than one (measured), while on an idle one they save little."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.e2e
def test_every_ablation_trainer_trains_an_iteration(nnunet_inputs, monkeypatch, one_thread):
    """Each row's trainer builds its row's network inside nnU-Net and takes a training step on real data."""
    from danie_nnunet.trainers import ABLATION_TRAINER_CLASSES
    for var, value in nnunet_inputs["env"].items():
        monkeypatch.setenv(var, value)
    batch = None
    for cls in ABLATION_TRAINER_CLASSES:
        plans = dict(json.loads(json.dumps(nnunet_inputs["plans"])), continue_training=False)  # edited by nnU-Net
        trainer = cls(plans=plans, configuration="2d", fold=0, dataset_json=nnunet_inputs["dataset_json"],
                      device=torch.device("cpu"))
        trainer.initialize()
        network = trainer.network
        assert network.cfg == get_config(cls.danie_variant), cls.__name__
        if batch is None:  # one real, augmented batch of the tiny dataset, shared by every row
            loader, _ = trainer.get_dataloaders()
            batch = next(loader)
        head = network.heads.seg_layers[0].weight.detach().clone()
        network.train()
        loss = trainer.train_step(batch)["loss"]
        assert np.isfinite(loss), cls.__name__
        assert not torch.equal(head, network.heads.seg_layers[0].weight), f"{cls.__name__}: no optimiser step"
        del trainer, network
        gc.collect()


@pytest.mark.e2e
def test_stock_cli_trains_an_ablation_row(trained, tmp_path):
    """nnUNetv2_train with a row's trainer (shortened to one iteration in an extra nnUNet_extTrainer folder):
    training, final validation and its summary.json, which the collector turns into the table row."""
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "danie_ablation_cli_test_trainers.py").write_text(textwrap.dedent("""
        from danie_nnunet.trainers import DANIETrainer_A2_noSAP


        class DANIETrainer_A2_noSAP_1it(DANIETrainer_A2_noSAP):
            epochs = 1
            iterations_per_epoch = 1
            val_iterations_per_epoch = 1

            def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):  # no test-time mirroring
                rotation, dummy_2d, patch, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
                self.inference_allowed_mirroring_axes = None
                return rotation, dummy_2d, patch, None
    """))
    env = dict(trained["env"], nnUNet_results=str(tmp_path / "results"), nnUNet_n_proc_DA="0",
               nnUNet_extTrainer=trained["env"]["nnUNet_extTrainer"] + os.pathsep + str(ext))
    proc = nnunet(["nnUNetv2_train", DATASET, "2d", "0", "-tr", "DANIETrainer_A2_noSAP_1it", "-device", "cpu"], env)
    assert "DANIE-L-A.2" in proc.stdout  # the row's configuration, named in the patch-size log line
    summary = tmp_path / "results" / DATASET_NAME / "DANIETrainer_A2_noSAP_1it__nnUNetPlans__2d" / "fold_0" / \
        "validation" / "summary.json"
    # the run stands in for the row's own trainer folder, as a full run of DANIETrainer_A2_noSAP would be laid out
    row_folder = tmp_path / "results" / DATASET_NAME / "DANIETrainer_A2_noSAP__nnUNetPlans__2d" / "fold_0"
    (row_folder / "validation").mkdir(parents=True)
    shutil.copy(summary, row_folder / "validation" / "summary.json")
    results = collect_results(str(tmp_path / "results"), DATASET)
    expected = 100 * json.load(open(summary))["foreground_mean"]["Dice"]
    assert set(results) == {"A.2"} and results["A.2"].dice == pytest.approx(expected)


def _summary(path, dices):
    """A summary.json as nnU-Net writes it (only the fields the collector reads)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    means = {str(c): {"Dice": d} for c, d in enumerate(dices, start=1)}
    finite = [d for d in dices if not np.isnan(d)]
    fg = float(np.mean(dices)) if len(finite) == len(dices) else float("nan")
    with open(path, "w") as f:
        json.dump({"foreground_mean": {"Dice": fg}, "mean": means, "metric_per_case": []}, f)


def test_collector_fills_the_paper_tables(tmp_path, capsys):
    results = tmp_path / "results"
    dataset = results / "Dataset002_Synapse"
    folder = lambda trainer, fold: str(dataset / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}" / "validation" /
                                       "summary.json")
    _summary(folder("DANIETrainer_A1_noHAP", 0), [0.70, 0.80])
    _summary(folder("DANIETrainer_A1_noHAP", 1), [0.80, 0.90])
    _summary(folder("DANIETrainer_C2_Add", 0), [0.80, 0.86])  # A.5 is the same network: its run stands in
    _summary(folder("DANIETrainer_C3_EH_Add", 0), [0.9, float("nan")])  # a class absent in every case
    _summary(folder("DANIETrainer_C4_ES_Add__other", 0), [0.1, 0.1])  # another trainer: never read
    test_summary = tmp_path / "test_summary.json"
    _summary(str(test_summary), [0.9, 0.9])

    found = collect_results(str(results), "2", summaries={"C.5": str(test_summary)})
    assert set(found) == {"A.1", "A.5", "B.4", "C.2", "C.3", "C.5"}  # A.5 = B.4 = C.2: one network
    assert found["A.1"].dice == pytest.approx(80.0) and found["A.1"].spread == pytest.approx(5.0)
    assert found["A.5"].source == "DANIETrainer_C2_Add" and found["A.5"].dice == pytest.approx(83.0)
    assert found["C.3"].dice == pytest.approx(90.0)  # NaN foreground mean: mean over the classes with a Dice
    assert found["C.5"].dice == pytest.approx(90.0)

    text = format_tables(found, {"A.1": (85.19, 20.01)}, dataset="Dataset002_Synapse")
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| A.1 | w/o hierarchical-attention | `DANIETrainer_A1_noHAP` | 85.19 | 20.01 | 19.06 | 80.00 ± 5.00 " \
        "| 2 | 77.12 |" in text
    assert "83.00" in lines["A.5"] and "(DANIETrainer_C2_Add)" in lines["A.5"]
    assert "not trained" in lines["C.1"] and "85.47" in lines["C.5"]
    assert lines["B.4"].endswith("| 82.97 | 91.02 |")  # Table 6 also shows the paper's ACDC column
    assert text.index("Table 5") < text.index("Table 6") < text.index("Table 7")

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out, js = tmp_path / "tables" / "ablations.md", tmp_path / "ablations.json"
    args = parser.parse_args(["ablation-table", "--dataset", "Dataset002_Synapse", "--results", str(results),
                              "--no-cost", "--tables", "5", "--out", str(out), "--json", str(js)])
    assert args.func(args) == 0
    assert "Table 5" in out.read_text() and "Table 7" not in out.read_text()
    payload = json.loads(js.read_text())
    assert payload["A.1"]["ours"]["dice"] == pytest.approx(80.0) and payload["C.1"]["ours"] is None
    assert payload["C.5"]["paper"] == {"gflops": 26.55, "synapse": 85.47}

    # test-set reports of `danie-nnunet evaluate` (its summary has a plain 'mean' Dice), one folder per trainer
    reports = tmp_path / "reports"
    for trainer, dice in (("DANIETrainer_B1_SpatialChannel_noDcal", 0.815),
                          ("DANIETrainer_C2_Add", 0.83)):
        (reports / trainer).mkdir(parents=True)
        (reports / trainer / "summary.json").write_text(json.dumps({"mode": "paper", "mean": {"Dice": dice}}))
    found = collect_results(None, None, reports_dir=str(reports))
    assert set(found) == {"B.1", "C.2", "A.5", "B.4"} and found["B.1"].dice == pytest.approx(81.5)
    assert found["B.4"].source == "DANIETrainer_C2_Add"  # the same network: Table 6 ran on C.2's add fusion

    with pytest.raises(AblationTableError, match="no results of dataset '9'"):
        collect_results(str(results), "9")
    with pytest.raises(AblationTableError, match="unknown ablation rows"):
        collect_results(str(results), "2", summaries={"Z.9": str(test_summary)})


@pytest.mark.e2e
def test_collector_reads_a_real_nnunet_summary(trained, tmp_path):
    """The tiny trained model's validation summary.json, laid out as the C.5 trainer's run."""
    real = os.path.join(trained["results"], "fold_0", "validation", "summary.json")
    target = tmp_path / DATASET_NAME / "DANIETrainer_C5_JointPreservation__nnUNetPlans__2d" / "fold_0" / "validation"
    target.mkdir(parents=True)
    shutil.copy(real, target / "summary.json")
    found = collect_results(str(tmp_path), DATASET)
    assert set(found) == {"C.5"}  # no other row trains the full network
    fg = json.load(open(real))["foreground_mean"]["Dice"]
    if np.isfinite(fg):
        assert found["C.5"].dice == pytest.approx(100 * fg)
    assert 0 <= found["C.5"].dice <= 100


def test_row_costs_match_the_network_counter():
    costs = row_costs(["A.2", "C.1"])
    params, gmacs = costs["A.2"]
    assert 30 < params < 40 and 9 < gmacs < 11  # HAP only (paper: 10.98 GFLOPs)
    assert costs["C.1"][1] > gmacs
