import functools
import os
import re
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
# under pytest-xdist (scripts/test.sh runs a worker per core) each worker computes on one thread: two workers of
# two OpenMP threads on two cores wait on each other
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` under pytest-xdist (scripts/test.sh): a test module runs on one worker (its module fixtures
    are built once), and the modules that use the shared trained model run on one worker together, so that it is
    trained once and no two workers write its folders at the same time. (`--dist loadgroup` would be the marks' way,
    but xdist 3.8 groups by renaming `item._nodeid`, which pytest 9.2 no longer reads: pytest-dev/pytest-xdist#1386.)"""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModulesSharingTheTrainedModel(LoadFileScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::", 1)[0]
            return "trained model" if uses_trained_model(os.path.join(str(config.rootpath), module)) else module

    return ModulesSharingTheTrainedModel(config, log)


@functools.lru_cache(maxsize=None)
def uses_trained_model(path):
    """Whether a test or fixture of the module at `path` takes the `trained` fixture below as an argument."""
    try:
        source = open(path, encoding="utf-8").read()
    except OSError:
        return False
    return re.search(r"def \w+\([^)]*\btrained\b", source) is not None


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
