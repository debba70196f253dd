"""The scripts under bench/ (not a package), loaded as modules for the tests."""
import importlib.util
import os
import sys


def load_bench_script(name: str):
    """bench/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), "..", "bench",
                                                                     f"{name}.py"))
    script = importlib.util.module_from_spec(spec)
    sys.modules[name] = script  # where dataclasses look a module's annotations up
    spec.loader.exec_module(script)
    return script
