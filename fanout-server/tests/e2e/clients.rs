//! The gRPC contract is the product: the Python and Go subscribers of `examples/` (stubs
//! generated from `proto/` by `examples/setup`) each receive and ack a produced set of
//! records, and a second run resumes where the first one's acks left off: nothing lost,
//! nothing acked delivered again.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

/// The commands `examples/setup` prints (it installs and builds what they need).
struct Examples {
    python: Vec<String>,
    python_path: String,
    go: String,
}

fn setup() -> Examples {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(root.join("examples/setup"))
        .output()
        .expect("run examples/setup");
    assert!(
        out.status.success(),
        "examples/setup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let value = |name: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing in: {text}"))
            .trim_matches('\'')
            .to_owned()
    };
    Examples {
        python: vec![value("FANOUT_PYTHON"), value("FANOUT_PY_SUBSCRIBER")],
        python_path: value("FANOUT_PY_PATH"),
        go: value("FANOUT_GO_SUBSCRIBER"),
    }
}

/// Runs a subscriber until it printed `count` records; returns their (partition, offset).
async fn run(cmd: &[String], env: &[(&str, &str)], args: &[&str]) -> Vec<(i32, i64)> {
    let mut c = tokio::process::Command::new(&cmd[0]);
    c.args(&cmd[1..]).args(args).kill_on_drop(true);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} {args:?} did not finish within 60 s"))
        .expect("run the subscriber");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                i32::try_from(v["partition"].as_i64().unwrap()).unwrap(),
                v["offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_and_go_subscribers_receive_ack_and_resume() {
    let examples = tokio::task::spawn_blocking(setup).await.unwrap();
    let topic = name("polyglot");
    create_topic(&topic, 2).await;
    let server = TestServer::start(&name("c")).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    let want = produce(&topic, 0, 200).await;
    let addr = server.grpc.trim_start_matches("http://").to_owned();
    let python_path = examples.python_path.clone();
    // Name, command, environment.
    type Subscriber<'a> = (&'a str, Vec<String>, Vec<(&'a str, &'a str)>);
    let subscribers: [Subscriber<'_>; 2] = [
        (
            "python",
            examples.python.clone(),
            vec![("PYTHONPATH", &python_path)],
        ),
        ("go", vec![examples.go.clone()], vec![]),
    ];
    for (lang, cmd, env) in subscribers {
        admin.subscribe(&topic, lang, "earliest").await;
        let base = ["--server", &addr, "--topic", &topic, "--subscription", lang];
        let go_flags = |args: &[&str]| -> Vec<String> {
            // Go's flag package takes `-name value`; the Python one `--name value`.
            args.iter()
                .map(|a| match (lang, a.strip_prefix("--")) {
                    ("go", Some(name)) => format!("-{name}"),
                    _ => (*a).to_owned(),
                })
                .collect()
        };
        let first_args: Vec<String> = go_flags(&[&base[..], &["--count", "120"]].concat());
        let first = run(
            &cmd,
            &env,
            &first_args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
        let rest_args: Vec<String> = go_flags(&[&base[..], &["--count", "80"]].concat());
        let rest = run(
            &cmd,
            &env,
            &rest_args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
        let (a, b): (BTreeSet<_>, BTreeSet<_>) = (
            first.iter().copied().collect(),
            rest.iter().copied().collect(),
        );
        println!(
            "{lang}: first run {} records, second run {}",
            a.len(),
            b.len()
        );
        assert_eq!(first.len(), 120, "{lang}: the first run stops at 120");
        assert!(a.is_disjoint(&b), "{lang}: an acked record came again");
        let all: BTreeSet<_> = a.union(&b).copied().collect();
        assert_eq!(all, want, "{lang}: every record, across the reconnect");
    }
    server.stop().await.unwrap();
}
