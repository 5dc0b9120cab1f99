//! House rules a grep can check: every source file says what it owns, no debugging leftovers,
//! no unbounded channels, no ignored tests.

use std::path::Path;

/// Every `.rs` file under `dir`.
pub fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn source_files_follow_the_house_rules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for d in ["src", "tests", "benches"] {
        if root.join(d).exists() {
            rust_files(&root.join(d), &mut files);
        }
    }
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let name = f.strip_prefix(root).unwrap().display().to_string();
        if !text.starts_with("//!") {
            problems.push(format!("{name}: does not start with a //! paragraph"));
        }
        // Built from pieces so this file does not trip its own checks.
        for banned in
            [concat!("dbg", "!("), concat!("unbounded", "_channel"), concat!("#[", "ignore]"), concat!("todo", "!(")]
        {
            if text.contains(banned) {
                problems.push(format!("{name}: contains {banned}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn architecture_names_every_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let missing: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .filter(|f| !arch.contains(&format!("`{f}`")))
        .collect();
    assert!(missing.is_empty(), "ARCHITECTURE.md's code map lacks: {missing:?}");
}

/// Only the transport knows poem: `src/http`, and `src/server.rs`, which serves it.
#[test]
fn only_the_transport_knows_poem() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut problems = Vec::new();
    for f in &files {
        let name = f.strip_prefix(root).unwrap().display().to_string();
        if name.starts_with("src/http/") || name == "src/server.rs" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("poem::") || code.contains("poem_openapi") {
                problems.push(format!("{name}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(problems.is_empty(), "poem outside the transport:\n{}", problems.join("\n"));
}
