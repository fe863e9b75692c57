//! The layout rules of issue 23, checked on the sources: no source file over 600 lines (test
//! modules excepted), no service reaching for the assembled node, and no import cycle between
//! the files of a crate. A parent module and the files it declares may use each other (a
//! child implements its parent's type; a parent re-exports its children); every other pair of
//! files may depend on each other one way only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most lines a non-test source file may have.
const MAX_LINES: usize = 600;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Whether a file holds test code only (`tests.rs`, or a file opened by `#![cfg(test)]`).
fn test_only(path: &Path, text: &str) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
        || text.trim_start().starts_with("#![cfg(test)]")
}

/// A file's module path inside its crate (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The code of `text` without comments and string literals (so paths in docs do not count).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_str && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' {
                in_str = !in_str;
                prev = c;
                continue;
            }
            if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Every `crate::…`, `super::…` and `self::…` path in `code`, with `use` groups expanded.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|p| bytes[i..].iter().take(p.len()).copied().eq(p.chars()));
        let boundary = i == 0
            || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':');
        match starts {
            Some(_) if boundary => {
                let (tree, end) = parse_tree(&bytes, i);
                found.extend(tree);
                i = end;
            }
            _ => i += 1,
        }
    }
    found
}

/// Parses a path (with `{…}` groups) starting at `i`; returns every expanded path and where
/// the parse ended.
fn parse_tree(s: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        let start = i;
        while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_') {
            i += 1;
        }
        if i > start {
            prefix.push(s[start..i].iter().collect::<String>());
        }
        if i + 1 < s.len() && s[i] == ':' && s[i + 1] == ':' {
            i += 2;
            if i < s.len() && s[i] == '{' {
                i += 1;
                let mut out = Vec::new();
                loop {
                    while i < s.len() && (s[i].is_whitespace() || s[i] == ',') {
                        i += 1;
                    }
                    if i >= s.len() || s[i] == '}' {
                        return (out, i + 1);
                    }
                    let (subs, end) = parse_tree(s, i);
                    for sub in subs {
                        let mut p = prefix.clone();
                        p.extend(sub);
                        out.push(p);
                    }
                    if end == i {
                        i += 1;
                    } else {
                        i = end;
                    }
                    // Skip an `as name`.
                    while i < s.len() && s[i] != ',' && s[i] != '}' {
                        i += 1;
                    }
                }
            }
            continue;
        }
        return (vec![prefix], i);
    }
}

/// The file a path from module `from` names: the longest prefix that is a module with a file.
fn resolve(
    from: &[String],
    from_is_dir: bool,
    path: &[String],
    modules: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<PathBuf> {
    let mut base: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("self") => from.to_vec(),
        Some("super") => {
            // `super` of `a::b` declared in `a/b.rs` or `a/b/mod.rs` is `a` either way.
            let _ = from_is_dir;
            from[..from.len().saturating_sub(1)].to_vec()
        }
        _ => return None,
    };
    let mut rest = &path[1..];
    while rest.first().is_some_and(|s| s == "super") {
        base.pop();
        rest = &rest[1..];
    }
    let mut best = modules.get(&base).cloned();
    for seg in rest {
        base.push(seg.clone());
        match modules.get(&base) {
            Some(f) => best = Some(f.clone()),
            None => break,
        }
    }
    best
}

/// Strongly connected components of more than one file.
fn cycles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    let nodes: Vec<&PathBuf> = edges.keys().collect();
    let reach = |a: &PathBuf| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![a.clone()];
        while let Some(n) = stack.pop() {
            for m in edges.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    stack.push(m.clone());
                }
            }
        }
        seen
    };
    let all: BTreeMap<&PathBuf, BTreeSet<PathBuf>> = nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(*n) || !all[n].contains(*n) {
            continue;
        }
        let comp: Vec<PathBuf> = nodes
            .iter()
            .filter(|m| all[n].contains(**m) && all[*m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        done.extend(comp.iter().cloned());
        if comp.len() > 1 {
            out.push(comp);
        }
    }
    out
}

#[test]
fn no_source_file_is_over_600_lines() {
    let root = workspace();
    let mut long = Vec::new();
    for krate in ["server", "client", "common", "prodserver"] {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let n = text.lines().count();
            if n > MAX_LINES && !test_only(&f, &text) {
                long.push(format!(
                    "{} ({n} lines)",
                    f.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:#?}");
}

#[test]
fn no_service_reaches_for_the_assembled_node() {
    let src = workspace().join("server/src");
    let mut files = Vec::new();
    for dir in [
        "federation",
        "relay",
        "mailbox",
        "registration",
        "replication",
        "wills",
        "peer",
        "session",
    ] {
        rust_files(&src.join(dir), &mut files);
    }
    for f in ["metrics.rs", "admin.rs", "records.rs", "presence.rs"] {
        files.push(src.join(f));
    }
    let mut hits = Vec::new();
    for f in files {
        let code = code_only(&std::fs::read_to_string(&f).unwrap());
        for p in paths(&code) {
            let named = p.iter().any(|s| s == "Node" || s == "lifecycle");
            if named {
                hits.push(format!(
                    "{}: {}",
                    f.strip_prefix(&src).unwrap().display(),
                    p.join("::")
                ));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "services importing the assembly: {hits:#?}"
    );
}

#[test]
fn no_import_cycles_between_the_files_of_a_crate() {
    let root = workspace();
    let mut found = Vec::new();
    for krate in ["server", "client", "common", "prodserver"] {
        let src = root.join(krate).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        // The binaries under src/bin are crates of their own.
        files.retain(|f| !f.strip_prefix(&src).unwrap().starts_with("bin"));
        let modules: BTreeMap<Vec<String>, PathBuf> = files
            .iter()
            .map(|f| (module_of(&src, f), f.clone()))
            .collect();
        let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for f in &files {
            let from = module_of(&src, f);
            let is_dir = f.file_name().is_some_and(|n| n == "mod.rs");
            let code = code_only(&std::fs::read_to_string(f).unwrap());
            let entry = edges.entry(f.clone()).or_default();
            for p in paths(&code) {
                let Some(to) = resolve(&from, is_dir, &p, &modules) else {
                    continue;
                };
                let to_mod = module_of(&src, &to);
                // A parent and the files it declares may use each other.
                let parent_child = (to_mod.len() + 1 == from.len() && from.starts_with(&to_mod))
                    || (from.len() + 1 == to_mod.len() && to_mod.starts_with(&from));
                if to != *f && !parent_child {
                    entry.insert(to);
                }
            }
        }
        for c in cycles(&edges) {
            found.push(
                c.iter()
                    .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
                    .collect::<Vec<_>>(),
            );
        }
    }
    assert!(found.is_empty(), "import cycles: {found:#?}");
}

#[test]
fn the_checker_sees_a_cycle_and_a_group() {
    // The parser expands groups and the cycle finder sees a two-file cycle: the test above
    // could fail.
    let ps = paths("use crate::{a::B, c::{D, e::F as G}};\nfn f() { super::x::y(); }");
    assert!(
        ps.contains(&vec!["crate".into(), "a".into(), "B".into()]),
        "{ps:?}"
    );
    assert!(
        ps.contains(&vec!["crate".into(), "c".into(), "e".into(), "F".into()]),
        "{ps:?}"
    );
    assert!(
        ps.contains(&vec!["super".into(), "x".into(), "y".into()]),
        "{ps:?}"
    );
    let (a, b) = (PathBuf::from("a.rs"), PathBuf::from("b.rs"));
    let mut edges = BTreeMap::new();
    edges.insert(a.clone(), BTreeSet::from([b.clone()]));
    edges.insert(b.clone(), BTreeSet::from([a.clone()]));
    assert_eq!(cycles(&edges).len(), 1);
    edges.get_mut(&b).unwrap().clear();
    assert!(cycles(&edges).is_empty());
}
