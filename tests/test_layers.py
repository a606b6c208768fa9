"""The layers hold: ``chunkq`` → ``web`` | ``workerd`` → ``schema``, and no import cycle.

The contracts live in setup.cfg (``[importlinter]``), the one place CI's ``lint-imports`` and
these tests read. The cycle check works on modules, counting imports inside functions too,
so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("chunkq", "web", "workerd", "schema")


def cycles(graph: grimp.ImportGraph, modules: Iterable[str]) -> list[list[str]]:
    """The import cycles among ``modules``: strongly connected components of two or more
    modules (Tarjan's algorithm, iterative so a deep graph needs no recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, edges = work[-1]
            for imported in edges:
                if imported not in index:
                    index[imported] = low[imported] = len(index)
                    stack.append(imported)
                    on_stack.add(imported)
                    work.append(
                        (imported, iter(sorted(graph.find_modules_directly_imported_by(imported))))
                    )
                    break
                if imported in on_stack:
                    low[module] = min(low[module], index[imported])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def test_imports__have_no_cycle(graph: grimp.ImportGraph) -> None:
    assert cycles(graph, graph.modules) == []


def test_cycles__finds_one_made_through_a_lazy_import(graph: grimp.ImportGraph) -> None:
    # The check itself can fail: a function-level import back up the queue is a cycle.
    graph = copy.deepcopy(graph)
    graph.add_import(
        importer="schema.queue.reductions",
        imported="schema.queue.finalize",
        line_number=1,
        line_contents="from schema.queue.finalize import finalize",
    )
    assert ["schema.queue.finalize", "schema.queue.reductions"] in [
        [m for m in c if m in {"schema.queue.finalize", "schema.queue.reductions"}]
        for c in cycles(graph, graph.modules)
    ]


def test_layers__contracts_in_setup_cfg_are_kept(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    code = lint_imports(config_filename="setup.cfg", no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out
