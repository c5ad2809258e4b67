//! Every reference to a file of the repository, in the code and the docs,
//! resolves inside the repository: `docs/….md` and other repository paths
//! named in text, and relative Markdown links. Nothing points outside it.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The repository's text files that can cite others.
fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                if !["target", ".git", "corpus", "artifacts"].contains(&name.as_str()) {
                    walk(&p, out);
                }
            } else if [".rs", ".md", ".sh", ".py", ".toml"]
                .iter()
                .any(|x| name.ends_with(x))
                || p.parent().and_then(|d| d.file_name()) == Some(std::ffi::OsStr::new(".ci"))
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out
}

/// Repository-relative paths named in `text`: a run of path characters that
/// starts with a top-level folder and ends in a known extension.
fn named_paths(text: &str) -> Vec<String> {
    let dirs = [
        "docs/",
        "src/",
        "crates/",
        "tests/",
        "scripts/",
        "benches/",
        "examples/",
        "benchmarks/",
        "fuzz/",
        ".ci/",
    ];
    let exts = [".md", ".rs", ".sh", ".py", ".toml", ".txt"];
    let ok = |c: char| c.is_ascii_alphanumeric() || "_-./".contains(c);
    let mut out = Vec::new();
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let prev_ok = i > 0 && (ok(bytes[i - 1]) || bytes[i - 1] == '$');
        if !prev_ok {
            let rest: String = bytes[i..bytes.len().min(i + 12)].iter().collect();
            if dirs.iter().any(|d| rest.starts_with(d)) {
                let mut j = i;
                while j < bytes.len() && ok(bytes[j]) {
                    j += 1;
                }
                let word: String = bytes[i..j].iter().collect();
                let word = word.trim_end_matches('.');
                if exts.iter().any(|x| word.ends_with(x)) && !word.contains('*') {
                    out.push(word.to_string());
                }
                i = j;
                continue;
            }
        }
        i += 1;
    }
    out
}

#[test]
fn every_file_reference_resolves_inside_the_repository() {
    let root = root();
    let mut broken = Vec::new();
    for file in sources() {
        let text = std::fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(&root).unwrap().display().to_string();
        if rel == "tests/doc_links.rs" {
            continue;
        }
        if text.contains(&["..", "/shared"].concat()) {
            broken.push(format!(
                "{rel}: points at the shared folder outside the repository"
            ));
        }
        for p in named_paths(&text) {
            // Paths the code creates or that name another crate's files.
            if p.starts_with("fuzz/target") || p.starts_with("fuzz/artifacts") {
                continue;
            }
            if !root.join(&p).exists() {
                broken.push(format!("{rel}: {p}"));
            }
        }
        if rel.ends_with(".md") {
            // Relative Markdown links: [text](path) or [text](path#anchor).
            for part in text.split("](").skip(1) {
                let target = part.split(')').next().unwrap_or("");
                let target = target.split('#').next().unwrap_or("");
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                if !file.parent().unwrap().join(target).exists() {
                    broken.push(format!("{rel}: link ({target})"));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "references that do not resolve:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_scanner_finds_what_it_should() {
    assert_eq!(
        named_paths("see docs/design.md §1, and (crates/twolayer/src/step/block.rs)."),
        ["docs/design.md", "crates/twolayer/src/step/block.rs"]
    );
    assert!(named_paths("target/bench-gate/compare.md $out/docs/x.md").is_empty());
}
