"""A training killed (SIGKILL) while writing a checkpoint and in the middle of an epoch resumes with --c.

Three runs of the stock `nnUNetv2_train` on the shared tiny dataset, trainer DANIETrainerTestFaults (3 epochs,
checkpoint every epoch): (1) killed halfway through writing checkpoint_latest.pth after epoch 1; (2) `--c`,
killed in the second step of epoch 1; (3) `--c` to the end.
"""
import os

import pytest
import torch

from nnunet_helpers import DATASET, DATASET_NAME, nnunet
from danie_nnunet.trainers.atomic_checkpoint import PARTIAL_SUFFIX, remove_partial_writes, write_atomically

pytestmark = pytest.mark.e2e
TRAINER = "DANIETrainerTestFaults"


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)  # nnU-Net's checkpoint format (our own file)


@pytest.fixture(scope="module")
def runs(trained):
    env = trained["env"]
    train = ["nnUNetv2_train", DATASET, "2d", "0", "-tr", TRAINER, "-device", "cpu"]
    fold = os.path.join(env["nnUNet_results"], DATASET_NAME, f"{TRAINER}__nnUNetPlans__2d", "fold_0")
    out = {"fold": fold}
    out["write"] = nnunet(train, env, expect_ok=False, nnUNet_n_proc_DA="0", DANIE_TEST_KILL_IN_CHECKPOINT_WRITE="1")
    out["partials_after_write_kill"] = [f for f in os.listdir(fold) if PARTIAL_SUFFIX in f]
    out["latest_after_write_kill"] = load(os.path.join(fold, "checkpoint_latest.pth"))
    out["epoch"] = nnunet(train + ["--c"], env, expect_ok=False, nnUNet_n_proc_DA="0", DANIE_TEST_KILL_IN_EPOCH="1")
    out["partials_after_epoch_kill"] = [f for f in os.listdir(fold) if PARTIAL_SUFFIX in f]
    out["latest_after_epoch_kill"] = load(os.path.join(fold, "checkpoint_latest.pth"))
    out["final"] = nnunet(train + ["--c"], env, nnUNet_n_proc_DA="0")
    return out


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(runs):
    assert runs["write"].returncode == -9  # SIGKILL
    partial = [f for f in runs["partials_after_write_kill"] if f.startswith(".checkpoint_latest.pth")]
    assert len(partial) == 1, runs["partials_after_write_kill"]  # the half-written file is the temporary one ...
    assert runs["latest_after_write_kill"]["current_epoch"] == 1  # ... and checkpoint_latest.pth is epoch 0's, whole
    assert any(k.startswith("sap.") for k in runs["latest_after_write_kill"]["network_weights"])


def test_kill_during_an_epoch_then_continue_resumes(runs):
    epoch_run, final = runs["epoch"], runs["final"]
    assert epoch_run.returncode == -9
    assert "removed" in epoch_run.stdout and "interrupted" in epoch_run.stdout  # the stale temp file is cleaned
    assert runs["partials_after_epoch_kill"] == []
    assert "Epoch 1" in epoch_run.stdout and "Epoch 0\n" not in epoch_run.stdout  # resumed from the kept checkpoint
    assert runs["latest_after_epoch_kill"]["current_epoch"] == 1
    assert final.returncode == 0 and "Epoch 1" in final.stdout and "Epoch 2" in final.stdout
    assert "Epoch 0\n" not in final.stdout
    checkpoint = load(os.path.join(runs["fold"], "checkpoint_final.pth"))
    assert checkpoint["current_epoch"] == 3 and checkpoint["trainer_name"] == TRAINER
    assert len(checkpoint["logging"]["train_losses"]) == 3  # one logged loss per epoch, none lost or doubled
    assert not os.path.exists(os.path.join(runs["fold"], "checkpoint_latest.pth"))  # nnU-Net removes it at the end


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = str(tmp_path / "checkpoint_latest.pth")
    write_atomically(lambda p: torch.save({"epoch": 1}, p), path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}

    def broken(p):
        with open(p, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(broken, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["checkpoint_latest.pth"]  # no temporary file left
    write_atomically(lambda p: None, str(tmp_path / "skipped.pth"))  # a writer that writes nothing (DDP rank > 0)
    assert not os.path.exists(tmp_path / "skipped.pth")
    (tmp_path / f".checkpoint_best.pth{PARTIAL_SUFFIX}123").write_bytes(b"x")
    assert [os.path.basename(p) for p in remove_partial_writes(str(tmp_path))] == [f".checkpoint_best.pth{PARTIAL_SUFFIX}123"]
    assert os.listdir(tmp_path) == ["checkpoint_latest.pth"]
