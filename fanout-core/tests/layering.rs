//! The core does no I/O. Cargo keeps out every crate it does not declare (Kafka, gRPC, HTTP)
//! and, in `cargo check -p fanout-core --lib` (run by `scripts/test`), tokio's network,
//! file system, timers and task spawning, which this crate does not ask for. What Cargo
//! cannot keep out is the standard library's: this test fails if a core source names its
//! file system, network, threads or processes.

use std::path::{Path, PathBuf};

const FORBIDDEN: &[&str] = &["std::fs", "std::net", "std::thread", "std::process"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_core_does_no_io() {
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 10, "core sources not found: {files:?}");
    let mut violations = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        // Unit tests may race threads against the core (the lock-free log).
        let unit_tests = file.file_name().is_some_and(|n| n == "tests.rs");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                if unit_tests && *word == "std::thread" {
                    continue;
                }
                if code.contains(word) {
                    violations.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "the core must not do I/O:\n{}",
        violations.join("\n")
    );
}
