//! The module graph, read from the code: the paths every file of `src/` and `actors/` names
//! (`use` trees and inline paths starting with `crate::`, `super::` or `self::`; comments,
//! strings and `#[cfg(test)]` modules left out).
//!
//! - Between the library's components (its top-level modules, and each service under
//!   `actors/`), the edges are exactly those of [`LAYERS`]: a component uses only components
//!   listed before it, so a back-edge (settings reaching into storage, an actor into the HTTP
//!   API) fails here, naming the file and the path.
//! - Inside a component, and inside the binary, no two files import each other, directly or
//!   round a cycle. A file and its parent module (`mod.rs`, the facade that declares it) may
//!   use each other's items.
//! - Exactly one component talks to Redis: `fred` is named under `src/storage/` only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's components in layer order, each with the components it uses. Keep it exact:
/// a new edge must be added here (after checking it points down the table), and an edge no
/// code uses any more must be removed.
const LAYERS: &[(&str, &[&str])] = &[
    ("clock", &[]),
    ("settings", &[]),
    ("storage", &["clock", "settings"]),
    ("supervisor", &["clock", "settings"]),
    ("actors::history", &["clock", "settings", "supervisor"]),
    (
        "actors::storage_monitor",
        &["clock", "storage", "supervisor"],
    ),
    (
        "actors::presence",
        &["clock", "settings", "storage", "supervisor"],
    ),
    (
        "actors::locks",
        &["clock", "settings", "storage", "supervisor"],
    ),
    (
        "actors::cache",
        &[
            "actors::storage_monitor",
            "settings",
            "storage",
            "supervisor",
        ],
    ),
    (
        "actors::heartbeat",
        &[
            "actors::storage_monitor",
            "clock",
            "settings",
            "storage",
            "supervisor",
        ],
    ),
    (
        "actors::shared_data",
        &[
            "actors::locks",
            "clock",
            "settings",
            "storage",
            "supervisor",
        ],
    ),
    (
        "actors::scheduler",
        &[
            "actors::history",
            "actors::locks",
            "clock",
            "settings",
            "storage",
            "supervisor",
        ],
    ),
    (
        "actors::hazards",
        &[
            "actors::history",
            "actors::locks",
            "clock",
            "settings",
            "storage",
            "supervisor",
        ],
    ),
    (
        "fleet",
        &[
            "actors::cache",
            "actors::hazards",
            "actors::heartbeat",
            "actors::history",
            "actors::locks",
            "actors::presence",
            "actors::scheduler",
            "actors::shared_data",
            "actors::storage_monitor",
            "settings",
            "storage",
            "supervisor",
        ],
    ),
    (
        "http",
        &[
            "actors::hazards",
            "actors::heartbeat",
            "actors::history",
            "actors::locks",
            "actors::presence",
            "actors::scheduler",
            "actors::shared_data",
            "actors::storage_monitor",
            "clock",
            "fleet",
            "settings",
            "storage",
            "supervisor",
        ],
    ),
];

#[test]
fn the_library_components_use_exactly_the_layers_allowed() {
    let library = library();
    let known: BTreeSet<&str> = LAYERS.iter().map(|(name, _)| *name).collect();
    let mut problems = Vec::new();
    for (position, (name, uses)) in LAYERS.iter().enumerate() {
        for used in *uses {
            let below = LAYERS[..position].iter().any(|(n, _)| n == used);
            if !below {
                problems.push(format!(
                    "LAYERS: {name} uses {used}, which is not listed before it"
                ));
            }
        }
    }
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    for file in &library.files {
        let Some(from) = component(&file.module) else {
            continue;
        };
        if !known.contains(from.as_str()) {
            problems.push(format!(
                "{}: component {from} is not in LAYERS",
                file.path.display()
            ));
            continue;
        }
        for (target, text) in library.targets(file) {
            let Some(to) = component(&target) else {
                continue;
            };
            if to == from {
                continue;
            }
            seen.entry((from.clone(), to.clone()))
                .or_insert_with(|| format!("{}: {text}", file.path.display()));
        }
    }
    for ((from, to), example) in &seen {
        let allowed = LAYERS
            .iter()
            .any(|(name, uses)| name == from && uses.contains(&to.as_str()));
        if !allowed {
            problems.push(format!("{from} must not use {to}: {example}"));
        }
    }
    for (name, uses) in LAYERS {
        for used in *uses {
            if !seen.contains_key(&(name.to_string(), used.to_string())) {
                problems.push(format!(
                    "LAYERS allows {name} -> {used}, which no code uses: remove it"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    assert!(seen.len() > 20, "the paths were read: {seen:?}");
}

#[test]
fn no_two_files_of_a_component_import_each_other() {
    let library = library();
    let cycles = cycles(&library, |file| component(&file.module));
    assert!(cycles.is_empty(), "\n{}", cycles.join("\n"));
}

#[test]
fn no_two_files_of_the_binary_import_each_other() {
    let binary = Crate::read(&[("src/bin/botfleet", &[])]);
    assert!(binary.files.len() > 5, "the binary was read");
    let cycles = cycles(&binary, |_| Some("botfleet (binary)".to_owned()));
    assert!(cycles.is_empty(), "\n{}", cycles.join("\n"));
}

/// Exactly one module talks to Redis: fred is named under src/storage/ only.
#[test]
fn only_storage_uses_fred() {
    let mut checked = 0;
    for dir in ["src", "actors"] {
        let mut paths = Vec::new();
        rust_files(&root().join(dir), &mut paths);
        for path in paths {
            checked += 1;
            if path.starts_with(root().join("src/storage")) {
                continue;
            }
            let code = strip(&std::fs::read_to_string(&path).unwrap());
            assert!(
                !code.contains("fred::"),
                "{} talks to fred directly",
                path.display()
            );
        }
    }
    assert!(checked > 5, "the source tree was found");
}

/// The checker reads what it must: `use` trees, inline paths, `super` in inline modules, and
/// nothing in comments, strings or tests.
#[test]
fn paths_are_read_from_code_only() {
    let code = r##"
        //! [`crate::http`] in a doc comment
        use crate::{settings::Settings, storage::{self, Storage}};
        use super::*;
        /* crate::fleet in a block comment */
        const S: &str = "crate::daemon";
        const R: &str = r#"crate::cli"#;
        fn f<'a>(x: &'a str) -> char { let _ = crate::clock::now_ms(); 'c' }
        mod inner { use super::sibling::Thing; }
        #[cfg(test)]
        mod tests { use crate::http::HttpApi; }
    "##;
    let paths = paths(&strip(code), &["actors".to_owned(), "locks".to_owned()]);
    let mut got: Vec<String> = paths.into_iter().map(|(p, _)| p.join("::")).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "actors",
            "actors::locks::sibling::Thing",
            "clock::now_ms",
            "settings::Settings",
            "storage",
            "storage::Storage"
        ]
    );
}

/// A crate's files, each with the module path it is mounted at.
struct Crate {
    files: Vec<SourceFile>,
    modules: BTreeSet<Vec<String>>,
    /// Names the crate root re-exports (`pub use fleet::{Fleet, ...}`), with their module.
    reexports: BTreeMap<String, Vec<String>>,
}

struct SourceFile {
    path: PathBuf,
    module: Vec<String>,
    code: String,
}

impl Crate {
    /// The files under each directory, mounted at the module path given with it.
    fn read(dirs: &[(&str, &[&str])]) -> Crate {
        let mut files = Vec::new();
        for (dir, mount) in dirs {
            let base = root().join(dir);
            let mut paths = Vec::new();
            rust_files(&base, &mut paths);
            for path in paths {
                let relative = path.strip_prefix(&base).unwrap();
                let mut module: Vec<String> = mount.iter().map(|s| s.to_string()).collect();
                let parts: Vec<String> = relative
                    .with_extension("")
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                for (i, part) in parts.iter().enumerate() {
                    let last = i + 1 == parts.len();
                    if last && ["mod", "lib", "main"].contains(&part.as_str()) {
                        break;
                    }
                    module.push(part.clone());
                }
                let code = strip(&std::fs::read_to_string(&path).unwrap());
                files.push(SourceFile { path, module, code });
            }
        }
        let modules = files.iter().map(|f| f.module.clone()).collect();
        let mut reexports = BTreeMap::new();
        for file in files.iter().filter(|f| f.module.is_empty()) {
            for statement in file.code.split(';') {
                let Some(tree) = statement.trim().strip_prefix("pub use ") else {
                    continue;
                };
                let Some((module, names)) = tree.split_once("::") else {
                    continue;
                };
                for name in names.split(|c: char| "{}, \n".contains(c)) {
                    if !name.is_empty() {
                        reexports.insert(name.to_owned(), vec![module.trim().to_owned()]);
                    }
                }
            }
        }
        Crate {
            files,
            modules,
            reexports,
        }
    }

    /// The modules `file` names, each with the text that names it.
    fn targets(&self, file: &SourceFile) -> Vec<(Vec<String>, String)> {
        paths(&file.code, &file.module)
            .into_iter()
            .filter_map(|(mut path, text)| {
                if let Some(module) = path.first().and_then(|name| self.reexports.get(name)) {
                    path.splice(..1, module.iter().cloned());
                }
                (0..=path.len())
                    .rev()
                    .map(|n| path[..n].to_vec())
                    .find(|prefix| self.modules.contains(prefix))
                    .map(|module| (module, text))
            })
            .collect()
    }
}

/// The library: `src/` at the crate root, `actors/` mounted at `actors`.
fn library() -> Crate {
    let mut library = Crate::read(&[("src", &[]), ("actors", &["actors"])]);
    library
        .files
        .retain(|f| !f.path.starts_with(root().join("src/bin")));
    library.modules = library.files.iter().map(|f| f.module.clone()).collect();
    library
}

/// The component a module belongs to: its top-level module, or `actors::SERVICE`. The crate
/// root and `actors/mod.rs` only declare modules and belong to none.
fn component(module: &[String]) -> Option<String> {
    match module {
        [] => None,
        [first] if first == "actors" => None,
        [first, service, ..] if first == "actors" => Some(format!("actors::{service}")),
        [first, ..] => Some(first.clone()),
    }
}

/// Cycles between files of the same group (`group` of each file; `None`: not checked),
/// leaving out edges between a module and its ancestors.
fn cycles(krate: &Crate, group: impl Fn(&SourceFile) -> Option<String>) -> Vec<String> {
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in &krate.files {
        let Some(g) = group(file) else { continue };
        let node = edges.entry(file.module.clone()).or_default();
        for (target, _) in krate.targets(file) {
            let related = target.starts_with(&file.module) || file.module.starts_with(&target);
            let same_group = krate
                .files
                .iter()
                .find(|f| f.module == target)
                .and_then(&group)
                .is_some_and(|tg| tg == g);
            if !related && same_group {
                node.insert(target);
            }
        }
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for start in edges.keys() {
        let mut stack = vec![start.clone()];
        walk(&edges, &mut stack, &mut done, &mut found);
    }
    found
}

fn walk(
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    stack: &mut Vec<Vec<String>>,
    done: &mut BTreeSet<Vec<String>>,
    found: &mut Vec<String>,
) {
    let Some(node) = stack.last().cloned() else {
        return;
    };
    if done.contains(&node) {
        return;
    }
    for next in edges.get(&node).into_iter().flatten() {
        if let Some(at) = stack.iter().position(|m| m == next) {
            let cycle: Vec<String> = stack[at..]
                .iter()
                .chain([next])
                .map(|m| m.join("::"))
                .collect();
            found.push(format!("cycle: {}", cycle.join(" -> ")));
        } else {
            stack.push(next.clone());
            walk(edges, stack, done, found);
            stack.pop();
        }
    }
    done.insert(node);
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `code` without comments, string and character literals (each replaced by a space), and
/// without `#[cfg(test)]` modules.
fn strip(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && matches!(next, Some('#' | '"')) && !ident_before(&chars, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < chars.len() {
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push(' ');
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' {
            // A character literal ('c', '\n', '\u{1F600}'), not a lifetime ('a).
            let close = if next == Some('\\') {
                (i + 3..chars.len().min(i + 12)).find(|&j| chars[j] == '\'')
            } else {
                (chars.get(i + 2) == Some(&'\'')).then_some(i + 2)
            };
            match close {
                Some(end) => {
                    i = end + 1;
                    out.push(' ');
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    drop_test_modules(&out)
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// `code` without the `#[cfg(test)] mod NAME { ... }` blocks.
fn drop_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let is_module = after.trim_start().starts_with("mod ")
            && after
                .find('{')
                .is_some_and(|b| after.find(';').is_none_or(|s| b < s));
        if !is_module {
            out.push_str("#[cfg(test)]");
            rest = after;
            continue;
        }
        let open = after.find('{').unwrap_or(0);
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Tokens of stripped code: identifiers, `::`, and single punctuation characters.
fn tokens(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push("::".to_owned());
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            tokens.push(c.to_string());
            i += 1;
        }
    }
    tokens
}

/// The absolute module paths that stripped `code` of the module `module` names (resolved from
/// `crate`, `super` and `self`), each with the path as written.
fn paths(code: &str, module: &[String]) -> Vec<(Vec<String>, String)> {
    let tokens = tokens(code);
    let mut found = Vec::new();
    // Inline modules open around the current token: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "mod" if tokens.get(i + 2).map(String::as_str) == Some("{") => {
                inline.push((tokens[i + 1].clone(), depth + 1));
            }
            "crate" | "super" | "self"
                if tokens.get(i + 1).map(String::as_str) == Some("::")
                    && (i == 0 || tokens[i - 1] != "::") =>
            {
                let here: Vec<String> = module
                    .iter()
                    .cloned()
                    .chain(inline.iter().map(|(n, _)| n.clone()))
                    .collect();
                let (trees, end) = use_tree(&tokens, i);
                for tree in trees {
                    if let Some(path) = resolve(&tree, &here) {
                        found.push((path, tree.join("::")));
                    }
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The paths of the use tree (or plain path) starting at `tokens[i]`, and the index after it.
fn use_tree(tokens: &[String], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        match tokens.get(i).map(String::as_str) {
            Some("{") => {
                let mut all = Vec::new();
                i += 1;
                loop {
                    match tokens.get(i).map(String::as_str) {
                        Some("}") => return (all, i + 1),
                        Some(",") => i += 1,
                        None => return (all, i),
                        _ => {
                            let (subtrees, end) = use_tree(tokens, i);
                            for sub in subtrees {
                                all.push(prefix.iter().cloned().chain(sub).collect());
                            }
                            i = end;
                        }
                    }
                }
            }
            Some("*") => return (vec![prefix], i + 1),
            Some(t) if t.starts_with(|c: char| c.is_alphabetic() || c == '_') => {
                prefix.push(t.to_owned());
                i += 1;
                if tokens.get(i).map(String::as_str) == Some("::") {
                    i += 1;
                } else {
                    return (vec![prefix], i);
                }
            }
            _ => return (vec![prefix], i),
        }
    }
}

/// `path` (as written, from `crate`, `super` or `self`) as an absolute module path, seen from
/// the module `here`; `self` at the end of a use tree (`storage::{self}`) names its parent.
fn resolve(path: &[String], here: &[String]) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (n, segment) in path.iter().enumerate() {
        match segment.as_str() {
            "crate" if n == 0 => out.clear(),
            "self" if n == 0 => out = here.to_vec(),
            "super" if n == 0 => {
                out = here.to_vec();
                out.pop()?;
            }
            "super" => {
                out.pop()?;
            }
            "self" => {}
            other if n == 0 => return (other == "crate").then(Vec::new),
            other => out.push(other.to_owned()),
        }
    }
    Some(out)
}
