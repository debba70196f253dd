import os
import socket
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/nnunet_helpers.py
from nnunet_helpers import nnunet_trained  # noqa: E402

# nnU-Net reads this at import time; keep its spawn pools small on the 2-core CI machines
os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_compile", "f")
os.environ.pop("DANIE_PRETRAINED", None)  # tests never depend on weights the user happens to have
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Tests never need the network: any connection to a non-loopback address fails loudly."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("localhost", "127.0.0.1", "::1") and self.family != socket.AF_UNIX:
            raise RuntimeError(f"test tried to reach the network ({address})")
        return real_connect(self, address)

    socket.socket.connect = guarded
    yield
    socket.socket.connect = real_connect


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One tiny dataset planned, preprocessed and trained through the stock CLI, shared by all test modules:
    dict(env, paths, root, results, killed, resumed); see nnunet_helpers.nnunet_trained."""
    return nnunet_trained(tmp_path_factory.mktemp("nnunet"))
