"""The import graph of the code points one way: no cycle, and no module imports a layer above its own.

A module's layer is its folder (a module may import its own layer and those below):
  0 contract       pipeline/core/: the stage contract, task, errors, records, the sample model, the strict config
                   base, config loading
  1 video I/O      pipeline/video/: probe, decoders, frame extraction and sampling, image ops, watchdog, paths,
                   inputs, and the probe and decode stages
  2 stages         filters/, dense_caption/, shards/: the stage packages, the shard writer and reader
  3 training       train/, evaluation/: the trainer and held-out evaluation on the shards
  4 orchestration  pipeline/*.py: the run config, the stage graph, a run, the CLI, the demo, the Ray cluster helpers

Beside them, not part of the product:
  5 fixtures       fixtures/: synthetic videos, the codec corpus, tiny random models, the local vLLM server, for
                   the demo, the tests and the benches. Fixtures may import contract, video I/O, stages and
                   training; a product module imports fixtures only if FIXTURE_USERS lists it, and only the
                   fixtures listed there (the demo's examples and tiny VLM, the trainer's `model.tiny` switch).
  6 benches        bench/: may import every layer above, never the tests; one bench may use another's helpers,
                   never in a circle.

Imports inside functions count as much as those at the top of a file: a lazy import
that points up is still a dependency on the layer above.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "dense_caption", "evaluation", "filters", "fixtures", "shards", "train", "bench")
LAYER_NAMES = ["contract", "video I/O", "stages", "training", "orchestration", "fixtures", "benches"]
FIXTURES = LAYER_NAMES.index("fixtures")
BENCHES = LAYER_NAMES.index("benches")

# A module's layer from its folder: the longest folder prefix that names one.
FOLDER_LAYERS = {
    "pipeline.core": 0,
    "pipeline.video": 1,
    "filters": 2, "dense_caption": 2, "shards": 2,
    "train": 3, "evaluation": 3,
    "pipeline": 4,
    "fixtures": FIXTURES,
    "bench": BENCHES,
}

# The only product modules that may import fixtures, and which fixtures each may import: the entry points that
# run on made-up inputs (the demo's example videos and tiny VLM) and the trainer's `model.tiny: true` switch.
FIXTURE_USERS = {
    "pipeline.demo": {"fixtures.videos", "fixtures.local_vllm"},
    "train.trainer": {"fixtures.tiny_train_model"},
}


def module_files() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            out[".".join(parts)] = path
    return out


def layer_of(module: str) -> int | None:
    folder = module.rpartition(".")[0]
    while folder:
        if folder in FOLDER_LAYERS:
            return FOLDER_LAYERS[folder]
        folder = folder.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `module` imports anywhere in its file (top level, functions, TYPE_CHECKING blocks)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = module.split(".")[: -node.level]
                base = ".".join(pkg + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            # `from shards import ledger` names a module; `from shards.layout import RunDir` names its module
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {mod: imports_of(mod, path, known) for mod, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in module_files() if layer_of(m) is None)
    assert not unplaced, f"modules in no layer folder (FOLDER_LAYERS): {unplaced}"


def test_every_package_is_checked():
    """A new top-level package (or a folder inside pipeline/) must be given a layer here, not slip past."""
    tops = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in ("tests",))
    assert sorted(set(tops) - set(PACKAGES)) == [], "packages the layer check does not see"
    inner = sorted(f"pipeline.{p.parent.name}" for p in (ROOT / "pipeline").glob("*/__init__.py"))
    assert sorted(set(inner) - set(FOLDER_LAYERS)) == [], "folders inside pipeline/ with no layer"


def test_fixtures_stay_out_of_the_wheel():
    text = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"\[tool\.setuptools\.packages\.find\][^\[]*?\ninclude = \[([^\]]*)\]", text).group(1)
    assert "fixtures" not in include and "bench" not in include


def test_no_import_points_up():
    """Within the product; imports of fixtures have their own rule below."""
    upward = []
    for mod, deps in sorted(import_graph().items()):
        mine = layer_of(mod)
        if mine == BENCHES:
            continue
        for dep in sorted(deps):
            theirs = layer_of(dep)
            if theirs == FIXTURES:
                continue
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{mod} ({LAYER_NAMES[mine]}) -> {dep} ({LAYER_NAMES[theirs]})")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_product_imports_fixtures_only_from_entry_points():
    files = module_files()
    stale = sorted({name for mod, allowed in FIXTURE_USERS.items() for name in {mod, *allowed}} - set(files))
    assert not stale, f"FIXTURE_USERS names modules that do not exist: {stale}"
    wrong = []
    for mod, deps in sorted(import_graph().items()):
        if layer_of(mod) in (FIXTURES, BENCHES):
            continue
        for dep in sorted(d for d in deps if layer_of(d) == FIXTURES):
            if dep not in FIXTURE_USERS.get(mod, set()):
                wrong.append(f"{mod} -> {dep}")
    assert not wrong, (
        "product modules that import fixtures (synthetic inputs, tiny models: never the pipeline's real data path);\n"
        "move what they need into the product, or, for an entry point that runs on made-up inputs, add the import\n"
        "to FIXTURE_USERS:\n" + "\n".join(wrong))


def test_fixtures_import_no_orchestration():
    """Fixtures build on the contract, video I/O, the stages and training, never on a run, the graph or the CLI."""
    wrong = [f"{mod} -> {dep} ({LAYER_NAMES[layer_of(dep)]})"
             for mod, deps in sorted(import_graph().items()) if layer_of(mod) == FIXTURES
             for dep in sorted(deps) if layer_of(dep) not in (0, 1, 2, 3, FIXTURES)]
    assert not wrong, "fixtures importing orchestration:\n" + "\n".join(wrong)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_see_lazy_imports_and_cycles(tmp_path):
    """The checker itself: a lazy import inside a function is found, and a two-module loop is a cycle."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from pipeline.run import run_pipeline\n    from shards import ledger\n")
    known = {"pipeline.run", "shards.ledger", "shards.__init__", "pipeline.m"}
    assert imports_of("pipeline.m", src, known) == {"pipeline.run", "shards.ledger"}
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert layer_of("pipeline.run") == 4 and layer_of("pipeline.core.stage") == 0 and layer_of("train.model") == 3
    assert layer_of("pipeline.video.probe") == 1 and layer_of("shards.sink") == 2 and layer_of("bench.llm") == BENCHES
    assert layer_of("fixtures.videos") == FIXTURES


def test_the_readme_architecture_table_places_modules_as_this_test_does():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Architecture\n"):]
    section = section[: section.index("\n## ", 1)]
    checked = 0
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] not in LAYER_NAMES:
            continue
        layer = LAYER_NAMES.index(cells[0])
        for path in re.findall(r"`([a-z_/]+/(?:[a-z_*]+\.py)?)`", cells[1]):
            modules = [m for m, f in module_files().items() if f.relative_to(ROOT).match(path)] if path.endswith(".py") \
                else [m for m in module_files() if m.startswith(path.rstrip("/").replace("/", ".") + ".")]
            assert modules and all(layer_of(m) == layer for m in modules), f"README puts {path} in {cells[0]}"
            checked += len(modules)
    assert checked > 30
