//! Structural rules of the code base that the compiler does not enforce in one crate.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn files_under(dir: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files
        .into_iter()
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// Actors never depend on the daemon, HTTP, CLI or the Fleet wiring above them.
#[test]
fn actors_do_not_depend_on_the_layers_above() {
    let forbidden = [
        "crate::daemon",
        "crate::cli",
        "crate::http",
        "crate::fleet",
        "crate::bench",
    ];
    for (path, text) in files_under("actors") {
        for f in forbidden {
            assert!(!text.contains(f), "{path} uses {f}");
        }
    }
}

/// Exactly one module talks to Redis: fred is named under src/storage/ only.
#[test]
fn only_storage_uses_fred() {
    let mut checked = 0;
    for dir in ["src", "actors"] {
        for (path, text) in files_under(dir) {
            checked += 1;
            if path.contains("/src/storage/") {
                continue;
            }
            assert!(!text.contains("fred::"), "{path} talks to fred directly");
        }
    }
    assert!(checked > 5, "the source tree was found");
}
