//! The core modules do no I/O: they never name the network, Kafka, HTTP or gRPC crates, the
//! file system, or spawn tasks. Adapters wrap them; `app` wires everything.

use std::path::{Path, PathBuf};

const CORE: &[&str] = &["model", "log", "delivery", "registry", "shard"];

const FORBIDDEN: &[&str] = &[
    "tonic",
    "axum",
    "hyper",
    "rdkafka",
    "reqwest",
    "tokio::net",
    "tokio::fs",
    "tokio::task",
    "tokio::spawn",
    "tokio::time",
    "std::net",
    "std::fs",
    "std::thread",
    "std::process",
    "fanout_proto",
    "crate::store",
    "crate::ingest",
    "crate::grpc",
    "crate::admin",
    "crate::app",
    "crate::kafka",
];

fn sources(module: &str) -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.join(format!("{module}.rs"))];
    let dir = src.join(module);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            files.push(e.path());
        }
    }
    files
}

#[test]
fn core_modules_do_no_io() {
    let mut violations = Vec::new();
    for module in CORE {
        let files = sources(module);
        assert!(files[0].exists(), "core module {module} not found");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            // Unit tests of a core module may race threads against it (the lock-free log).
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
    }
    assert!(
        violations.is_empty(),
        "core modules must not do I/O:\n{}",
        violations.join("\n")
    );
}
