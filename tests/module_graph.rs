//! The library's modules form no circle: no top-level module uses one that
//! uses it back, directly or through others (docs/design.md §4). A module
//! "uses" another when its source names `crate::other` (in a `use` or a
//! path); comments do not count. A circle found is printed as the chain
//! of modules and the file that names each next one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module of the library (a file or a folder of `src`), with
/// the other top-level modules its files name and where.
fn graph() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/twolayer/src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut g: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str();
        let first = first.to_string_lossy();
        // The binary is the application over the library, not part of it.
        if first == "bin" || first == "lib.rs" || first == "main.rs" {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let uses = g.entry(module.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap();
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.entry(name).or_insert_with(|| rel.to_path_buf());
                }
            }
        }
    }
    // Names that are items of lib.rs rather than modules (re-exports).
    let modules: BTreeSet<String> = g.keys().cloned().collect();
    for uses in g.values_mut() {
        uses.retain(|m, _| modules.contains(m));
    }
    g
}

/// A circle through `from`, as the chain of modules, if there is one.
fn circle(
    g: &BTreeMap<String, BTreeMap<String, PathBuf>>,
    from: &str,
    at: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in g[at].keys() {
        if next == from {
            let mut c = path.clone();
            c.push(from.to_string());
            return Some(c);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(c) = circle(g, from, next, path, seen) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn no_module_uses_one_that_uses_it_back() {
    let g = graph();
    assert!(g.len() > 10, "found only {:?}", g.keys());
    assert!(g["step"].contains_key("kernels"), "the scan finds uses");
    for m in g.keys() {
        let mut path = vec![m.clone()];
        if let Some(c) = circle(&g, m, m, &mut path, &mut BTreeSet::new()) {
            let links: Vec<String> = c
                .windows(2)
                .map(|w| format!("{} → {} ({})", w[0], w[1], g[&w[0]][&w[1]].display()))
                .collect();
            panic!("modules in a circle: {}", links.join(", "));
        }
    }
}
