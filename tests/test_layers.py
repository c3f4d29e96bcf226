"""The import graph of the code points one way: no cycle, and no module imports a layer above its own.

Layers, bottom to top (a module may import its own layer and those below):
  0 contract       the stage contract, task, errors, records, the strict config base, config loading
  1 video I/O      probe, decoders, frame extraction and sampling, image ops, watchdog, paths, inputs
  2 stages         the stage packages (filters/, dense_caption/, shards/), train/, evaluation/, the video stages
  3 orchestration  the stage graph, a run, the CLI, the demo, the Ray cluster helpers

Beside them, not part of the pipeline:
  4 fixtures       synthetic videos, the codec corpus, tiny random models, the local vLLM server (fixtures/):
                   for the demo, the tests and the benches. Fixtures may import contract, video I/O and
                   stages; a product module imports fixtures only if FIXTURE_USERS lists it, and only the
                   fixtures listed there (the demo's examples and tiny VLM, the trainer's `model.tiny` switch).

Imports inside functions count as much as those at the top of a file: a lazy import
that points up is still a dependency on the layer above.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "dense_caption", "evaluation", "filters", "fixtures", "shards", "train")
LAYER_NAMES = ["contract", "video I/O", "stages", "orchestration", "fixtures"]
FIXTURES = LAYER_NAMES.index("fixtures")

PIPELINE_LAYERS = {
    0: ["config_base", "config_errors", "config_load", "config_run", "errors", "meta", "records", "redact", "sample",
        "sample_io", "sample_schema", "stage", "tables", "task", "video_tokens"],
    1: ["config_video", "decode_decord", "decode_log", "decord_build", "decode_pyav", "decoders", "extract", "frames",
        "imageops", "keyset", "llava_source", "manifests", "opened", "paths", "probe", "report", "sampling", "sources", "watchdog"],
    2: ["stages"],
    3: ["__init__", "__main__", "audit", "cli", "config", "demo", "graph", "plan", "resume", "run", "run_summary",
        "ray_local", "raystop", "waves"],
}
STAGE_PACKAGES = ("dense_caption", "evaluation", "filters", "shards", "train")  # every module of these sits in layer 2

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
    pkg, _, rest = module.partition(".")
    if pkg == "fixtures":
        return FIXTURES
    if pkg in STAGE_PACKAGES:
        return 2
    for layer, names in PIPELINE_LAYERS.items():
        if rest in names:
            return layer
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
    assert not unplaced, f"modules with no layer (add them to PIPELINE_LAYERS): {unplaced}"


def test_no_layer_list_names_a_missing_module():
    files = module_files()
    missing = sorted(f"pipeline.{n}" for names in PIPELINE_LAYERS.values() for n in names
                     if f"pipeline.{n}" not in files)
    assert not missing, f"layers name modules that do not exist: {missing}"


def test_no_import_points_up():
    """Within the product; imports of fixtures have their own rule below."""
    upward = []
    for mod, deps in sorted(import_graph().items()):
        mine = layer_of(mod)
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
        if layer_of(mod) == FIXTURES:
            continue
        for dep in sorted(d for d in deps if layer_of(d) == FIXTURES):
            if dep not in FIXTURE_USERS.get(mod, set()):
                wrong.append(f"{mod} -> {dep}")
    assert not wrong, (
        "product modules that import fixtures (synthetic inputs, tiny models: never the pipeline's real data path);\n"
        "move what they need into the product, or, for an entry point that runs on made-up inputs, add the import\n"
        "to FIXTURE_USERS:\n" + "\n".join(wrong))


def test_fixtures_import_no_orchestration():
    """Fixtures build on the contract, video I/O and the stages, never on a run, the graph or the CLI."""
    wrong = [f"{mod} -> {dep} ({LAYER_NAMES[layer_of(dep)]})"
             for mod, deps in sorted(import_graph().items()) if layer_of(mod) == FIXTURES
             for dep in sorted(deps) if layer_of(dep) not in (0, 1, 2, FIXTURES)]
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
    assert layer_of("pipeline.run") == 3 and layer_of("pipeline.stage") == 0 and layer_of("train.model") == 2
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
        for path in re.findall(r"`([a-z_]+/(?:[a-z_*]+\.py)?)`", cells[1]):
            modules = [m for m, f in module_files().items() if f.relative_to(ROOT).match(path)] if path.endswith(".py") \
                else [m for m in module_files() if m.startswith(path.rstrip("/") + ".")]
            assert modules and all(layer_of(m) == layer for m in modules), f"README puts {path} in {cells[0]}"
            checked += len(modules)
    assert checked > 30
