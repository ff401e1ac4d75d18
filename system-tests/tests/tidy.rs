//! Tidy checks of the workspace's own sources, in the manner of rust-analyzer's `tidy`: every
//! Rust file starts with a `//!` line saying what it is.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, leaving out build output and hidden folders.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("");
        if path.is_dir() && !name.starts_with('.') && name != "target" {
            rust_files(&path, found);
        } else if path.is_file() && name.ends_with(".rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_comment() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the crate");
    let mut files = Vec::new();
    rust_files(workspace, &mut files);
    // A walk of the wrong folder would find next to nothing and pass.
    assert!(files.len() > 50, "only {} Rust files found", files.len());
    let mut missing: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).expect("a readable source file");
            !text.starts_with("//!")
        })
        .map(|path| {
            path.strip_prefix(workspace)
                .unwrap_or(path)
                .display()
                .to_string()
        })
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "these files do not start with a `//!` line saying what they are:\n{}",
        missing.join("\n")
    );
}
