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


def inline_supers(text: str) -> str:
    """Rewrites `super::` paths inside inline `mod x { … }` blocks (including those a
    macro writes, `mod $m { … }`) as paths from the file's own module: one `super`
    per level of nesting stays inside the file."""
    opens = [m.end() for m in re.finditer(r"\bmod\s+\$?\w+\s*\{", text)]
    depth_at = [0] * (len(text) + 1)
    depth, stack, i = 0, [], 0
    starts = set(opens)
    for i, ch in enumerate(text):
        if i in starts:
            stack.append(1)
            depth += 1
        elif ch == "{" and stack:
            stack[-1] += 1
        if ch == "}" and stack:
            stack[-1] -= 1
            if stack[-1] == 0:
                stack.pop()
                depth -= 1
        depth_at[i] = depth

    def fix(m: re.Match) -> str:
        d = depth_at[m.start()]
        k = m.group(0).count("super")
        if d == 0:
            return m.group(0)
        return "self::" if k <= d else "super::" * (k - d)

    return re.sub(r"\b(?:super::\s*)+", fix, text)


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


ITEMS = "(own items)"


def strip_reexports(text: str) -> str:
    """Drops `pub use …;` (re-exports: they name an item for others, they are not a
    dependency of the module's own items) and `mod …;` lines."""
    text = re.sub(r"\bpub(\([^)]*\))?\s+use\s[^;]*;", "", text)
    return re.sub(r"\b(pub(\([^)]*\))?\s+)?mod\s+\w+\s*;", "", text)


def use_items(body: str) -> list[list[str]]:
    """The paths a `use` body names: `a::{b::C, d as e}` → a::b::C, a::d."""
    body = body.strip()
    if "{" not in body:
        return [[p.strip() for p in body.split(" as ")[0].split("::") if p.strip()]]
    prefix, _, rest = body.partition("{")
    base = [p.strip() for p in prefix.split("::") if p.strip()]
    out, depth, cur = [], 0, ""
    inner = rest.rsplit("}", 1)[0]
    for ch in inner + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            if cur.strip():
                out.extend(base + p for p in use_items(cur))
            cur = ""
        else:
            cur += ch
    return out


def absolute(here: list[str], root: str, path: list[str]) -> tuple[str, ...]:
    if root == "crate":
        base = []
    elif root == "self":
        base = list(here)
    else:
        base = list(here[:-1])
        while path and path[0] == "super":
            base = base[:-1]
            path = path[1:]
    return tuple(base + list(path))


def reexports(here: list[str], text: str, children: set[str]) -> dict[str, tuple[str, ...]]:
    """`pub use` aliases of a module: name → the absolute path it stands for."""
    out = {}
    for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]*);", text):
        body = m.group(1)
        for item in use_items(body):
            if not item:
                continue
            alias = body.split(" as ")[-1].strip() if " as " in body and "{" not in body else item[-1]
            if item[0] in ("crate", "self", "super"):
                out[alias] = absolute(here, item[0], item[1:])
            elif item[0] in children:
                out[alias] = tuple(here) + tuple(item)
    return out


def targets(here: list[str], text: str, children: set[str]) -> set[tuple[str, ...]]:
    """Absolute paths (modules, or items in them) that `text` refers to: through
    `crate::`, `super::`, `self::`, and, in a module with children, a child's bare
    name (`pool::WorkerSet` in lib.rs)."""
    refs = set()
    for root, body in GROUP_RE.findall(text):
        for item in use_items(body):
            refs.add((root, tuple(item)))
    for root, rest in USE_RE.findall(text):
        path = [p.strip() for p in rest.split("::") if p.strip()]
        refs.add((root, tuple(path)))
    out = {absolute(here, root, list(path)) for root, path in refs}
    if children:
        bare = re.compile(r"(?<![:\w])(" + "|".join(sorted(children)) + r")::\s*([A-Za-z_][A-Za-z0-9_:\s{},]*)")
        for child, _ in bare.findall(text):
            out.add(tuple(here) + (child,))
    return out


def check(src: Path) -> list[str]:
    files = sorted(p for p in src.rglob("*.rs") if p.name != "tests.rs")
    modules = {tuple(module_path(src, f)): f for f in files}
    children = {m: {c[len(m)] for c in modules if len(c) == len(m) + 1 and c[: len(m)] == m} for m in modules}
    texts = {m: inline_supers(strip_tests(f.read_text())) for m, f in modules.items()}
    aliases = {m: reexports(list(m), t, children[m]) for m, t in texts.items()}

    def resolve(t: tuple[str, ...]) -> tuple[str, ...]:
        for _ in range(8):
            k = len(t)
            while k > 0 and t[:k] not in modules:
                k -= 1
            if k < len(t) and t[k] in aliases.get(t[:k], {}):
                t = aliases[t[:k]][t[k]] + t[k + 1 :]
                continue
            return t
        return t

    edges: dict[tuple[str, ...], dict[str, set[str]]] = {}
    for mod, text in texts.items():
        own = strip_reexports(text)
        for t in targets(list(mod), own, children[mod]):
            t = resolve(t)
            # The longest prefix of t that is a module.
            k = len(t)
            while k > 0 and tuple(t[:k]) not in modules:
                k -= 1
            target = tuple(t[:k])
            names_item = k < len(t)
            common = 0
            while common < min(len(mod), len(target)) and mod[common] == target[common]:
                common += 1
            if common == len(target) and common < len(mod) and names_item:
                # A descendant using an item its ancestor defines itself.
                edges.setdefault(target, {}).setdefault(mod[common], set()).add(ITEMS)
                continue
            if common == len(mod) and common < len(target):
                # A module's own items using a descendant's.
                edges.setdefault(mod, {}).setdefault(ITEMS, set()).add(target[common])
                continue
            if common == len(mod) or common == len(target):
                continue
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
    # Blind spot 1: `crate::Name` re-exported by the root names the module behind it.
    reexported = {
        "lib.rs": "pub mod a; pub mod b; pub use a::Thing;\npub use b::{Other as Renamed};",
        "a.rs": "use crate::b::helper;",
        "b.rs": "use crate::Thing;",
    }
    found = crate(reexported)
    assert len(found) == 1 and "a -> b -> a" in found[0], found
    reexported["b.rs"] = "fn f() {}"
    assert crate(reexported) == [], crate(reexported)
    # Blind spot 2: a child using an item its parent defines, which uses the child.
    root_item = {
        "lib.rs": "pub mod pool; pub mod handlers;\nuse pool::WorkerSet;\npub struct State { set: WorkerSet }",
        "pool.rs": "pub struct WorkerSet;",
        "handlers.rs": "use super::State;",
    }
    assert crate(root_item) == [], crate(root_item)
    root_item["pool.rs"] = "pub struct WorkerSet; fn f(_: crate::State) {}"
    found = crate(root_item)
    assert len(found) == 1 and "crate root" in found[0] and "pool" in found[0] and ITEMS in found[0], found
    # The same inside a module: its mod.rs items and its children.
    nested = {"lib.rs": "pub mod m;", "m/mod.rs": "mod p; pub struct S(p::X);", "m/p.rs": "pub struct X; fn g(_: super::S) {}"}
    found = crate(nested)
    assert len(found) == 1 and "in m:" in found[0], found
    # `super::` inside an inline module stays in its file.
    inline = {"lib.rs": "pub mod a; pub mod b; use a::A;", "a.rs": "pub struct A; mod inner { use super::A; }", "b.rs": ""}
    assert crate(inline) == [], crate(inline)


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
