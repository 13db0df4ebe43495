"""The package's layers, read from the source with ``ast`` (imports inside functions included):
no module imports a layer above its own, and no two modules import each other."""

import ast
from pathlib import Path

import metalm

ROOT = Path(metalm.__file__).parent
# (layer, layers it must not import)
RULES = [
    ("inner", {"data", "algorithms", "train", "eval", "run", "cli"}),
    ("eval", {"train", "cli"}),
    ("algorithms", {"train", "eval", "run", "cli"}),
    ("models", {"params", "data"}),
    ("run", {"train", "eval", "cli"}),
    ("data", {"algorithms", "train", "eval", "run", "cli", "inner"}),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the metalm modules it imports (``from .x import name`` counts ``.x.name`` when that is a module)."""
    deps: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                names = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                while name not in mods and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in mods and name != mod and name.startswith("metalm"):
                    deps[mod].add(name)
    return deps


def layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_imports_a_higher_layer():
    deps = imports(modules())
    wrong = [f"{m} -> {d}" for src, banned in RULES for m in deps if layer(m) == src
             for d in deps[m] if layer(d) in banned]
    assert not wrong, wrong


def test_no_two_modules_import_each_other():
    deps = imports(modules())
    # A package's __init__ re-exports its own modules; those import siblings, not the package.
    pairs = sorted(f"{a} <-> {b}" for a in deps for b in deps[a] if a < b and a in deps[b]
                   and not (b.startswith(a + ".") or a.startswith(b + ".")))
    assert not pairs, pairs


def test_the_checker_sees_imports_inside_functions():
    deps = imports(modules())
    assert "metalm.tools" in deps["metalm.cli"]  # `from .tools import ...` inside the command functions
    assert "metalm.diagnostics.measures" in deps["metalm.train"]  # `from .diagnostics.measures import ...` in a method


def test_no_function_is_longer_than_80_lines():
    """Small pieces (the evaluation-design issue): a function over 80 lines (docstring included) is split."""
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_the_readme_layout_lists_every_module_and_no_module_is_over_500_lines():
    """The README's layout names every module of the package in one line each (its folder's block), and the
    modules stay small."""
    readme = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):readme.index("## Status")]
    block = layout[layout.index("```"):layout.rindex("```")]
    listed, folder = set(), ""
    for line in block.splitlines()[1:]:
        words = line.split()
        if not words:
            continue
        if line.startswith("  ") and not line.startswith("    ") and words[0].endswith("/"):
            folder = words[0]
        elif line.startswith("    ") and words[0].endswith(".py"):
            listed.add(folder + words[0])
        elif line.startswith("  ") and words[0].endswith(".py"):
            listed.add(words[0])
    files = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
             if not (p.name == "__init__.py" and p.parent != ROOT)}
    assert files - listed == set(), "not in the README's layout"
    assert listed - files == set(), "in the README's layout, not in the package"
    long = {f"{p.relative_to(ROOT)}: {n}" for p in ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, long
