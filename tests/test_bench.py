"""The benchmarks stay runnable: every module under ``bench/`` imports, and the runner's
suite is the modules it names (``python -m bench`` itself takes minutes; CI runs it)."""

from __future__ import annotations

import importlib
import pkgutil

import bench
from bench.__main__ import MODULES, benchmarks


def test_bench__every_module_imports() -> None:
    names = [info.name for info in pkgutil.walk_packages(bench.__path__, "bench.")]
    assert "bench.chaos.soak" in names and "bench.drain" in names
    for name in names:
        importlib.import_module(name)


def test_bench__the_suite_is_every_named_module_with_a_run() -> None:
    suite = benchmarks()
    assert len(suite) == len(MODULES)
    assert all(callable(module.run) for module in suite.values())
