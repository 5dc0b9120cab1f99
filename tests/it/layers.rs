//! The layers of ARCHITECTURE.md, held: every module of `src/` sits in one layer of its table,
//! every path a module names into the crate (`crate::…`, `super::…`, `self::…`, a submodule's
//! name) points to its own layer or one below, and the modules' imports form no cycle. A
//! failure names the file and line of the import.
//!
//! A module's use of its own submodules is containment, not an import: a parent routes to its
//! children (`http` to its handlers), and only the children's imports of anything else count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::tidy::rust_files;

/// One reference from a module to another.
#[derive(Debug, Clone)]
struct Import {
    from: String,
    to: String,
    file: String,
    line: usize,
}

/// The layers, bottom first: each a list of module paths (a module belongs to the longest that
/// is a prefix of its path).
fn layers_of(architecture: &str) -> Vec<(String, Vec<String>)> {
    let table = architecture.split("## Layers").nth(1).expect("ARCHITECTURE.md has a `## Layers` section");
    let mut layers = Vec::new();
    for row in table.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | n | name | modules | knows |
        if cells.len() < 4 || cells[1].parse::<usize>().is_err() {
            continue;
        }
        let modules = cells[3].split('`').skip(1).step_by(2).map(str::to_owned).collect();
        layers.push((cells[2].to_owned(), modules));
    }
    assert!(layers.len() >= 5, "the layer table of ARCHITECTURE.md could not be read");
    layers
}

fn layer_index(layers: &[(String, Vec<String>)], module: &str) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (i, (_, mods)) in layers.iter().enumerate() {
        for m in mods {
            let hit = module == m || module.starts_with(&format!("{m}::"));
            if hit && best.is_none_or(|(len, _)| m.len() > len) {
                best = Some((m.len(), i));
            }
        }
    }
    best.map(|(_, i)| i)
}

/// `src/a/b.rs` → `a::b`, `src/a/mod.rs` → `a`, `src/lib.rs` → `` (the crate root).
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts.join("::")
}

/// The code of a line without its comment (strings holding `//` are rare enough in `src/`
/// that a line comment is taken to start at the first one).
fn code_of(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// Every path written in `code` that starts with one of `starts` (`crate::`, `super::`, a
/// child module's name), with `use a::{b, c::{d}}` groups flattened.
fn paths_in(code: &str, start: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find(start).map(|i| i + from) {
        from = at + start.len();
        let before = at.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
            continue;
        }
        let rest = &code[at..];
        out.extend(expand(rest));
    }
    out
}

/// The paths named at the start of `text`: `a::b::C` or `a::{b, c::D}` (one level of grouping
/// is enough to find the modules named).
fn expand(text: &str) -> Vec<String> {
    let mut head = String::new();
    for (i, c) in text.char_indices() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            head.push(c);
        } else if c == '{' && head.ends_with("::") {
            let inner = &text[i + 1..];
            let mut depth = 1;
            let mut end = inner.len();
            for (j, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let mut out = Vec::new();
            let mut depth = 0;
            let mut item = String::new();
            for ch in inner[..end].chars().chain(std::iter::once(',')) {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let it = item.trim();
                        let name: String =
                            it.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
                        if !name.is_empty() && name != "self" {
                            out.push(format!("{head}{name}"));
                        } else if name == "self" {
                            out.push(head.trim_end_matches("::").to_owned());
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
            return out;
        } else {
            break;
        }
    }
    vec![head.trim_end_matches("::").to_owned()]
}

/// The module a path names: the longest prefix of it that is a module.
fn resolve(path: &str, modules: &BTreeSet<String>, reexports: &BTreeMap<String, String>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    if let Some(first) = segs.first()
        && let Some(m) = reexports.get(*first)
    {
        return Some(m.clone());
    }
    (1..=segs.len()).rev().map(|n| segs[..n].join("::")).find(|c| modules.contains(c))
}

/// Every import between modules of `src/`.
fn imports(root: &Path) -> (BTreeSet<String>, Vec<Import>) {
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| !f.ends_with("main.rs"));
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f.strip_prefix(&src).unwrap())).collect();
    // `pub use a::B;` at the crate root: `crate::B` is module `a`.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut reexports = BTreeMap::new();
    for line in lib.lines().filter_map(|l| l.strip_prefix("pub use ")) {
        for path in expand(line) {
            let segs: Vec<&str> = path.split("::").collect();
            if let (Some(name), true) = (segs.last(), segs.len() > 1) {
                reexports.insert((*name).to_owned(), segs[..segs.len() - 1].join("::"));
            }
        }
    }
    let mut out = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap().display().to_string();
        let me = module_of(f.strip_prefix(&src).unwrap());
        let text = std::fs::read_to_string(f).unwrap();
        let parent = me.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_owned());
        let children: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let l = l.trim().trim_start_matches("pub ").trim_start_matches("pub(crate) ");
                l.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')).map(str::to_owned)
            })
            .collect();
        let mut seen = BTreeSet::new();
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line);
            let mut named: Vec<String> = Vec::new();
            named.extend(paths_in(code, "crate::").into_iter().map(|p| p["crate::".len().min(p.len())..].to_owned()));
            for p in paths_in(code, "super::") {
                let rest = p.strip_prefix("super::").unwrap_or("");
                named.push(if parent.is_empty() { rest.to_owned() } else { format!("{parent}::{rest}") });
            }
            for p in paths_in(code, "self::") {
                let rest = p.strip_prefix("self::").unwrap_or("");
                named.push(if me.is_empty() { rest.to_owned() } else { format!("{me}::{rest}") });
            }
            for child in &children {
                for p in paths_in(code, &format!("{child}::")) {
                    named.push(if me.is_empty() { p } else { format!("{me}::{p}") });
                }
            }
            for path in named {
                let Some(to) = resolve(&path, &modules, &reexports) else { continue };
                let contained = me.is_empty() || to == me || to.starts_with(&format!("{me}::"));
                if !contained && !to.is_empty() && seen.insert((n, to.clone())) {
                    out.push(Import { from: me.clone(), to, file: rel.clone(), line: n + 1 });
                }
            }
        }
    }
    (modules, out)
}

/// The cycles among modules: strongly connected components of more than one module.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on: BTreeSet<String>,
        out: Vec<Vec<String>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: &str) {
            let i = self.index.len();
            self.index.insert(v.to_owned(), i);
            self.low.insert(v.to_owned(), i);
            self.stack.push(v.to_owned());
            self.on.insert(v.to_owned());
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(&w);
                    let done = w == v;
                    comp.push(w);
                    if done {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

/// The problems of the tree at `root`: modules outside the table, imports that point up, and
/// cycles.
fn problems(root: &Path, architecture: &str) -> Vec<String> {
    let layers = layers_of(architecture);
    let (modules, imports) = imports(root);
    let mut problems = Vec::new();
    for m in modules.iter().filter(|m| !m.is_empty()) {
        if layer_index(&layers, m).is_none() {
            problems.push(format!("module `{m}` is in no layer of ARCHITECTURE.md's table"));
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in &imports {
        edges.entry(i.from.clone()).or_default().insert(i.to.clone());
        let (Some(a), Some(b)) = (layer_index(&layers, &i.from), layer_index(&layers, &i.to)) else { continue };
        if b > a {
            problems.push(format!(
                "{}:{}: `{}` ({}) imports `{}` ({}), a higher layer",
                i.file, i.line, i.from, layers[a].0, i.to, layers[b].0
            ));
        }
    }
    for comp in cycles(&edges) {
        let inside: Vec<String> = imports
            .iter()
            .filter(|i| comp.contains(&i.from) && comp.contains(&i.to))
            .map(|i| format!("  {}:{}: {} → {}", i.file, i.line, i.from, i.to))
            .collect();
        problems.push(format!("import cycle among {comp:?}:\n{}", inside.join("\n")));
    }
    problems
}

#[test]
fn imports_only_point_down_the_layers_and_form_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let problems = problems(root, &architecture);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The test itself can fail: a copy of the tree with one import that points up, and one that
/// closes a cycle, is refused with the file and line of each.
#[test]
fn a_wrong_import_is_named_with_its_file_and_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_tree(&root.join("src"), &copy.path().join("src"));
    // The ground layer reaching up into the store, which imports it: up, and a cycle.
    let ids = copy.path().join("src/ids.rs");
    let text = std::fs::read_to_string(&ids).unwrap();
    let line = text.lines().position(|l| l.starts_with("use ")).unwrap() + 1;
    let bad = text.replacen("use ", "use crate::store::Store;\nuse ", 1);
    std::fs::write(&ids, bad).unwrap();
    let problems = problems(copy.path(), &architecture);
    let expected = format!("src/ids.rs:{line}: `ids` (ground) imports `store` (store)");
    assert!(problems.iter().any(|p| p.starts_with(&expected)), "{expected} not in {problems:#?}");
    assert!(problems.iter().any(|p| p.starts_with("import cycle among")), "no cycle reported: {problems:#?}");
}

/// Only the named places make an `OrgScope` from a bare id: the principals' constructors
/// (`auth`), and the redemption of credentials checked against their organization's own
/// records (logins, refresh, invitation and reset tokens in `domain`).
#[test]
fn org_scopes_are_minted_only_where_credentials_are_checked() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let allowed: &[(&str, &[&str])] = &[
        ("vouched(", &["src/auth/mod.rs"]),
        ("for_login(", &["src/domain/login.rs"]),
        (
            "from_credential(",
            &[
                "src/domain/login.rs",
                "src/domain/users.rs",
                "src/http/files.rs",
                "src/domain/connections.rs",
                "src/domain/sso.rs",
                "src/domain/apps.rs",
            ],
        ),
        ("from_own_record(", &["src/uploads.rs", "src/webhooks/mod.rs", "src/registry.rs", "src/oauth.rs"]),
    ];
    let mut problems = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap().display().to_string();
        if rel == "src/tenancy.rs" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            for (ctor, places) in allowed {
                if code_of(line).contains(ctor) && !places.contains(&rel.as_str()) {
                    problems.push(format!("{rel}:{}: makes an OrgScope with `{ctor}`", n + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}
