#!/usr/bin/env python3
"""Checks that no crate's modules import each other in a circle.

Every reference to `crate::a::b::…` (or `super::…`, `self::…`) from module m is an
edge between the two children of the modules' lowest common ancestor on each
path, e.g. `engine::worker` using `crate::engine::Engine` is an edge worker →
engine among the crate's top-level modules; `model::transformer` using
`super::quant::QMatrix` is an edge transformer → quant inside `model`. The
modules under each parent must form a DAG. Test modules (`#[cfg(test)]`,
`tests.rs`) are left out: tests may look at anything.

Usage: scripts/check-module-cycles.py [--self-test] [CRATE_SRC_DIR ...]
(default: crates/*/src). Exit status 1 and the cycles found, or 0. `--self-test`
first checks the checker on small made-up crates.
"""

import re
import sys
from pathlib import Path

USE_RE = re.compile(r"\b(crate|super|self)((?:::\s*[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP_RE = re.compile(r"\buse\s+(crate|super|self)::([^;]*\{[^;]*\});", re.S)


def module_path(src: Path, file: Path) -> list[str]:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("lib", "main"):
        parts = parts[:-1]
    elif parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def strip_tests(text: str) -> str:
    """Drops `#[cfg(test)] mod … { … }` blocks and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    marker = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = marker.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    return "".join(out)


def targets(here: list[str], text: str) -> set[tuple[str, ...]]:
    """Absolute module paths (as far as they name modules) that `text` refers to."""
    refs = set()
    # Grouped imports: `use crate::a::{b::C, d};` → a::b, a::d.
    for root, body in GROUP_RE.findall(text):
        prefix, _, rest = body.partition("{")
        base = [p for p in prefix.split("::") if p.strip()]
        for item in rest.rstrip("}").split(","):
            item = item.strip()
            if not item:
                continue
            path = base + [p.strip() for p in item.split("::") if p.strip()]
            refs.add((root, tuple(path)))
    for root, rest in USE_RE.findall(text):
        path = [p.strip() for p in rest.split("::") if p.strip()]
        refs.add((root, tuple(path)))
    out = set()
    for root, path in refs:
        if root == "crate":
            base = []
        elif root == "self":
            base = list(here)
        else:
            base = list(here[:-1])
            while path and path[0] == "super":
                base = base[:-1]
                path = path[1:]
        out.add(tuple(base + list(path)))
    return out


def check(src: Path) -> list[str]:
    files = sorted(p for p in src.rglob("*.rs") if p.name != "tests.rs")
    modules = {tuple(module_path(src, f)): f for f in files}
    edges: dict[tuple[str, ...], dict[str, set[str]]] = {}
    for mod, file in modules.items():
        text = strip_tests(file.read_text())
        for t in targets(list(mod), text):
            # The longest prefix of t that is a module.
            k = len(t)
            while k > 0 and tuple(t[:k]) not in modules:
                k -= 1
            target = tuple(t[:k])
            common = 0
            while common < min(len(mod), len(target)) and mod[common] == target[common]:
                common += 1
            if common == len(mod) or common == len(target):
                continue  # a parent and its own descendant
            parent = mod[:common]
            a, b = mod[common], target[common]
            edges.setdefault(parent, {}).setdefault(a, set()).add(b)
    problems = []
    for parent, g in sorted(edges.items()):
        state: dict[str, int] = {}
        stack: list[str] = []

        def visit(n: str) -> None:
            state[n] = 1
            stack.append(n)
            for m in sorted(g.get(n, ())):
                if state.get(m) == 1:
                    cycle = stack[stack.index(m) :] + [m]
                    where = "::".join(parent) or "crate root"
                    problems.append(f"{src}: in {where}: " + " -> ".join(cycle))
                elif m not in state:
                    visit(m)
            stack.pop()
            state[n] = 2

        for n in sorted(g):
            if n not in state:
                visit(n)
    return problems


def self_test() -> None:
    """The checker finds a cycle through `use`, `super::` and grouped imports, and
    passes layered code, parents using children, and test modules."""
    import tempfile

    def crate(files: dict[str, str]) -> list[str]:
        with tempfile.TemporaryDirectory() as d:
            for name, text in files.items():
                p = Path(d) / name
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text)
            return check(Path(d))

    layered = {
        "lib.rs": "pub mod a; pub mod b; use crate::a::x;",
        "a.rs": "use crate::b::{y, z::W};\n#[cfg(test)]\nmod tests { use crate::lib_only; }",
        "b/mod.rs": "pub mod z; use self::z::W;",
        "b/z.rs": "use super::super::c;",
        "c.rs": "",
    }
    assert crate(layered) == [], crate(layered)
    looped = dict(layered)
    looped["c.rs"] = "use crate::a::{thing, other};"
    found = crate(looped)
    assert len(found) == 1 and "a -> b -> c -> a" in found[0], found
    inner = {"lib.rs": "pub mod m;", "m/mod.rs": "mod p; mod q;", "m/p.rs": "use super::q::X;", "m/q.rs": "fn f() { crate::m::p::g() }"}
    found = crate(inner)
    assert len(found) == 1 and "in m: p -> q -> p" in found[0], found


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--self-test"]:
        self_test()
        args = args[1:]
    roots = [Path(a) for a in args] or sorted(Path("crates").glob("*/src"))
    problems = [p for r in roots for p in check(r)]
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} module cycle(s)")
        return 1
    print(f"no module cycles in {len(roots)} crates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
