"""Running the stock nnU-Net commands from tests, and the one tiny trained model the test modules share."""
import os
import subprocess

import torch

from danie_nnunet.demo import console_script, nnunet_env
from danie_nnunet.synthetic import write_dataset

DATASET, DATASET_NAME, TRAINER = "991", "Dataset991_Tiny", "DANIETrainerTest"
TEST_EXT = os.path.join(os.path.dirname(__file__), "nnunet_ext")


def nnunet(args, env, expect_ok=True, timeout=900, **extra_env):
    """Run an nnU-Net (or danie-nnunet) console script; on failure show the tail of its output. A DANIE test trainer
    in it computes on as many threads as this process (nnunet_ext/danie_test_trainers.py)."""
    threads = {"DANIE_TEST_TORCH_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([console_script(args[0])] + [str(a) for a in args[1:]], env={**env, **threads, **extra_env},
                          capture_output=True, text=True, timeout=timeout)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\\n{proc.stdout[-3000:]}\\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def nnunet_trained(root):
    """Dataset -> plan/preprocess -> a training run killed when epoch 1 starts -> resumed with --c.

    In-plane 60 x 52: nnU-Net plans a patch that is not a multiple of 32, which DANIE must round up.
    """
    env = nnunet_env(str(root), extra_ext=TEST_EXT)
    env["nnUNet_def_n_proc"] = "1"
    paths = write_dataset(env["nnUNet_raw"], int(DATASET), "Tiny", num_train=6, num_test=2, shape=(6, 60, 52))
    nnunet(["nnUNetv2_plan_and_preprocess", "-d", DATASET, "-c", "2d", "-np", "1", "-npfp", "1"], env)
    train = ["nnUNetv2_train", DATASET, "2d", "0", "-tr", TRAINER, "-device", "cpu"]
    killed = nnunet(train, env, expect_ok=False, nnUNet_n_proc_DA="0", DANIE_TEST_KILL_AT_EPOCH="1")
    resumed = nnunet(train + ["--c"], env, nnUNet_n_proc_DA="0")
    results = os.path.join(env["nnUNet_results"], DATASET_NAME, f"{TRAINER}__nnUNetPlans__2d")
    return dict(env=env, paths=paths, root=root, results=results, killed=killed, resumed=resumed,
                preprocessed=os.path.join(env["nnUNet_preprocessed"], DATASET_NAME))
