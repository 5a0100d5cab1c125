//! The `fanout` command line: subscribe to a subscription, and operate fanout through its
//! admin API (topics, subscriptions, lag, seek, pause, resume). A library module so that
//! tests run it in-process; `src/bin/fanout.rs` only calls [`run`].

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::admin::{AdminClient, AdminError, segment};
use crate::{Discovery, Record, Subscriber, SubscriberConfig};

/// The `fanout` command line's arguments.
#[derive(Debug, Parser)]
#[command(name = "fanout", version, about = "Command-line client for fanout")]
pub struct Cli {
    /// The fanout shards (for `subscribe` and `tail`).
    ///
    /// `http://host:50051`, a comma-separated list of such endpoints, `dns://name:50051`
    /// (every address of a name, e.g. a Kubernetes headless Service), or
    /// `shards+http://host:8080` (the shards that admin API lists; its token is the admin
    /// token).
    #[arg(
        long,
        visible_alias = "grpc",
        global = true,
        env = "FANOUT_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Admin API of a fanout server (for everything else, and `tail`'s temporary
    /// subscription).
    #[arg(
        long,
        global = true,
        env = "FANOUT_ADMIN",
        default_value = "http://127.0.0.1:8080"
    )]
    admin: String,
    /// File holding the admin API's bearer token.
    #[arg(long, global = true, env = "FANOUT_ADMIN_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// How to print answers: tables for people, JSON for scripts.
    #[arg(long, global = true, value_enum, default_value = "pretty")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a subscription's records as they arrive, acking each one.
    Subscribe {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        subscription: String,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
        /// Records in flight (credits).
        #[arg(long, default_value_t = 500)]
        max_in_flight: u32,
        /// Do not ack: records stay unacked and come again later.
        #[arg(long)]
        no_ack: bool,
    },
    /// Follow a topic without a subscription of your own: a temporary one is created
    /// (starting now, or at the earliest record with --from-beginning) and deleted when
    /// this ends (--count reached, or Ctrl-C).
    Tail {
        #[arg(long)]
        topic: String,
        /// Start at the earliest record Kafka still holds instead of now.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Registered topics: list, register, unregister.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Subscriptions: list, show, create, delete.
    #[command(subcommand)]
    Subs(SubsCommand),
    /// Lag per subscription and partition (all subscriptions, or one), of every shard of
    /// the cluster (each shard knows the partitions it owns; the shard listed by each row).
    Lag {
        #[arg(long, requires = "subscription")]
        topic: Option<String>,
        #[arg(long, requires = "topic")]
        subscription: Option<String>,
        /// Ask only the shard at --admin, not every shard it lists.
        #[arg(long)]
        this_shard: bool,
    },
    /// Move a subscription's cursors: replay (back) or skip (forward).
    Seek(SeekArgs),
    /// Stop a subscription's deliveries (acks still count).
    Pause(SubRef),
    /// Start a paused subscription's deliveries again.
    Resume(SubRef),
    /// Deliver a subscription's dead letters to it again (to it alone), from where the last
    /// redrive stopped.
    Redrive {
        #[command(flatten)]
        sub: SubRef,
        /// Dead letters read per call to the server.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    List,
    /// Start reading a Kafka topic (it must exist in Kafka).
    Register {
        name: String,
        /// Where its new subscriptions start unless they say: `earliest` or `latest`.
        #[arg(long)]
        default_start: Option<String>,
    },
    /// Stop reading a topic.
    Unregister {
        name: String,
        /// Delete its subscriptions too.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SubsCommand {
    /// Subscriptions of a topic.
    List {
        #[arg(long)]
        topic: String,
    },
    Show(SubRef),
    Create {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        subscription: String,
        /// `earliest`, `latest` or `timestamp` (default: the topic's default start).
        #[arg(long)]
        start: Option<String>,
        /// With `--start timestamp`: RFC 3339 or epoch milliseconds.
        #[arg(long)]
        start_timestamp: Option<String>,
        /// Most records in flight per stream, whatever the subscriber asks for.
        #[arg(long)]
        max_in_flight_records: Option<u32>,
        /// `partition`, `key` or `none`.
        #[arg(long, default_value = "partition")]
        ordering: String,
        #[arg(long)]
        ack_timeout_ms: Option<u64>,
        #[arg(long)]
        max_attempts: Option<u32>,
        #[arg(long)]
        dead_letter_topic: Option<String>,
    },
    /// Change delivery settings, live (absent options keep their value).
    Update {
        #[command(flatten)]
        sub: SubRef,
        #[arg(long)]
        ack_timeout_ms: Option<u64>,
        #[arg(long)]
        max_attempts: Option<u32>,
        #[arg(long, conflicts_with = "no_dead_letter_topic")]
        dead_letter_topic: Option<String>,
        /// Most records in flight per stream (0: the server's limit).
        #[arg(long)]
        max_in_flight_records: Option<u32>,
        /// Remove the dead-letter topic (needs --max-attempts 0).
        #[arg(long)]
        no_dead_letter_topic: bool,
    },
    Delete(SubRef),
}

#[derive(Debug, Clone, Args)]
struct SubRef {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    subscription: String,
}

#[derive(Debug, Args)]
#[group(id = "target", required = true, multiple = false)]
struct SeekTarget {
    /// `earliest` (replay everything Kafka holds) or `latest` (skip everything so far).
    #[arg(long, group = "target")]
    to: Option<String>,
    /// The first record at or after this time: RFC 3339 (`2026-11-22T03:00:00Z`) or
    /// milliseconds since the Unix epoch.
    #[arg(long, group = "target")]
    timestamp: Option<String>,
    /// The first record at or after this long ago (`2h`, `1day`).
    #[arg(long, group = "target", value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Explicit offsets, `PARTITION=OFFSET` (repeatable).
    #[arg(long = "offset", group = "target", value_parser = parse_offset)]
    offsets: Vec<(i32, i64)>,
}

#[derive(Debug, Args)]
struct SeekArgs {
    #[command(flatten)]
    sub: SubRef,
    #[command(flatten)]
    target: SeekTarget,
    /// With --to, --timestamp or --since: only these partitions.
    #[arg(long = "partition")]
    partitions: Vec<i32>,
}

fn parse_offset(s: &str) -> Result<(i32, i64), String> {
    let (p, o) = s
        .split_once('=')
        .ok_or_else(|| format!("expected PARTITION=OFFSET, got {s:?}"))?;
    Ok((
        p.trim()
            .parse()
            .map_err(|_| format!("bad partition in {s:?}"))?,
        o.trim()
            .parse()
            .map_err(|_| format!("bad offset in {s:?}"))?,
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Tables (and one line per record for `subscribe`).
    Pretty,
    /// JSON (one object per line for `subscribe`).
    Json,
}

fn text(b: &Option<bytes::Bytes>) -> String {
    match b {
        None => "null".into(),
        Some(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn print_record(
    out: &mut (impl Write + ?Sized),
    r: &Record,
    format: Output,
) -> std::io::Result<()> {
    match format {
        Output::Pretty => writeln!(
            out,
            "{}/{}@{} attempt={} key={} value={}",
            r.topic,
            r.partition,
            r.offset,
            r.attempt,
            text(&r.key),
            text(&r.value)
        ),
        Output::Json => {
            let headers: serde_json::Map<String, serde_json::Value> = r
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_ref()
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .into(),
                    )
                })
                .collect();
            let v = serde_json::json!({
                "shard": r.shard(),
                "topic": &*r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "attempt": r.attempt,
                "timestamp_ms": r.timestamp_ms,
                "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                "value": r.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                "headers": headers,
            });
            writeln!(out, "{v}")
        }
    }
}

/// Runs the command line `args` (the first being the program name), printing to `out` and
/// errors to stderr.
pub async fn run<I, T>(args: I, out: &mut (dyn Write + Send)) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match execute(cli, out).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fanout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token(cli: &Cli) -> Result<Option<String>, AdminError> {
    if let Some(path) = &cli.token_file {
        let t = std::fs::read_to_string(path).map_err(|e| {
            AdminError::Transport(format!("cannot read --token-file {}: {e}", path.display()))
        })?;
        let t = t.trim();
        if t.is_empty() {
            return Err(AdminError::Transport(format!(
                "--token-file {} is empty",
                path.display()
            )));
        }
        return Ok(Some(t.to_owned()));
    }
    Ok(std::env::var("FANOUT_ADMIN_TOKEN")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}

fn sub_path(r: &SubRef) -> String {
    format!(
        "/v1/topics/{}/subscriptions/{}",
        segment(&r.topic),
        segment(&r.subscription)
    )
}

/// Names are never `.` or `..` (a URL would read them as path steps).
fn check_names(cli: &Cli) -> Result<(), AdminError> {
    let names: Vec<&str> = match &cli.command {
        Command::Topics(
            TopicsCommand::Register { name, .. } | TopicsCommand::Unregister { name, .. },
        )
        | Command::Subs(SubsCommand::List { topic: name }) => vec![name],
        Command::Subs(SubsCommand::Show(r) | SubsCommand::Delete(r))
        | Command::Pause(r)
        | Command::Resume(r) => vec![&r.topic, &r.subscription],
        Command::Subs(SubsCommand::Create {
            topic,
            subscription,
            ..
        }) => vec![topic, subscription],
        Command::Subs(SubsCommand::Update { sub, .. }) => vec![&sub.topic, &sub.subscription],
        Command::Seek(a) => vec![&a.sub.topic, &a.sub.subscription],
        Command::Redrive { sub, .. } => vec![&sub.topic, &sub.subscription],
        Command::Lag {
            topic,
            subscription,
            ..
        } => topic
            .iter()
            .chain(subscription.iter())
            .map(String::as_str)
            .collect(),
        Command::Tail { topic, .. } => vec![topic],
        Command::Topics(TopicsCommand::List) | Command::Subscribe { .. } => vec![],
    };
    match names
        .into_iter()
        .find(|n| !n.is_empty() && n.bytes().all(|b| b == b'.'))
    {
        Some(n) => Err(AdminError::Transport(format!(
            "{n:?} is not a valid name: letters, digits, '.', '_' and '-', not only dots"
        ))),
        None => Ok(()),
    }
}

/// Completes on Ctrl-C, SIGTERM or SIGHUP (listened for from the call on).
fn stop_signals() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let kinds = [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ];
        let signals: Vec<_> = kinds.into_iter().filter_map(|k| signal(k).ok()).collect();
        async move {
            if signals.is_empty() {
                return std::future::pending().await;
            }
            let waits = signals.into_iter().map(|mut s| {
                Box::pin(async move {
                    s.recv().await;
                })
            });
            futures::future::select_all(waits).await;
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The shards `--server` names (with the admin token for `shards+http://…`).
fn discovery(cli: &Cli) -> Result<Discovery, AdminError> {
    match cli.server.parse::<Discovery>() {
        Ok(d @ Discovery::Admin { .. }) => Ok(d.with_token(token(cli)?)),
        Ok(d) => Ok(d),
        Err(e) => Err(AdminError::Transport(format!("--server: {e}"))),
    }
}

async fn execute(cli: Cli, out: &mut (dyn Write + Send)) -> Result<ExitCode, AdminError> {
    check_names(&cli)?;
    let output = cli.output;
    let admin =
        || -> Result<AdminClient, AdminError> { AdminClient::new(&cli.admin, token(&cli)?) };
    let answer = match &cli.command {
        Command::Subscribe {
            topic,
            subscription,
            count,
            max_in_flight,
            no_ack,
        } => {
            let discovery = discovery(&cli)?;
            return Ok(subscribe(
                discovery,
                topic,
                subscription,
                *count,
                *max_in_flight,
                *no_ack,
                output,
                out,
            )
            .await);
        }
        Command::Topics(TopicsCommand::List) => {
            let v = admin()?.get("/v1/topics").await?;
            print_table(out, output, &v, &["name", "subscriptions", "created_at_ms"])
        }
        Command::Topics(TopicsCommand::Register {
            name,
            default_start,
        }) => {
            let mut body = json!({ "name": name });
            if let Some(d) = default_start {
                body["default_start"] = json!(d);
            }
            let v = admin()?.post("/v1/topics", body).await?;
            print_table(
                out,
                output,
                &json!([v]),
                &["name", "subscriptions", "created_at_ms"],
            )
        }
        Command::Topics(TopicsCommand::Unregister { name, force }) => {
            admin()?
                .delete(&format!("/v1/topics/{}?force={force}", segment(name)))
                .await?;
            print_done(out, output, &format!("topic {name} unregistered"))
        }
        Command::Subs(SubsCommand::List { topic }) => {
            let v = admin()?
                .get(&format!("/v1/topics/{}/subscriptions", segment(topic)))
                .await?;
            print_subs(out, output, &v)
        }
        Command::Subs(SubsCommand::Show(r)) => {
            let v = admin()?.get(&sub_path(r)).await?;
            match output {
                Output::Json => writeln!(out, "{v}"),
                Output::Pretty => print_subs(out, output, &json!([v])),
            }
        }
        Command::Subs(SubsCommand::Create {
            topic,
            subscription,
            start,
            start_timestamp,
            max_in_flight_records,
            ordering,
            ack_timeout_ms,
            max_attempts,
            dead_letter_topic,
        }) => {
            let start_timestamp_ms = start_timestamp.as_deref().map(parse_time).transpose()?;
            let body = given([
                ("name", Some(json!(subscription))),
                ("ordering", Some(json!(ordering))),
                ("start", start.as_ref().map(|v| json!(v))),
                ("start_timestamp_ms", start_timestamp_ms.map(|v| json!(v))),
                (
                    "max_in_flight_records",
                    max_in_flight_records.map(|v| json!(v)),
                ),
                ("ack_timeout_ms", ack_timeout_ms.map(|v| json!(v))),
                ("max_attempts", max_attempts.map(|v| json!(v))),
                (
                    "dead_letter_topic",
                    dead_letter_topic.as_ref().map(|v| json!(v)),
                ),
            ]);
            let v = admin()?
                .post(
                    &format!("/v1/topics/{}/subscriptions", segment(topic)),
                    body,
                )
                .await?;
            print_subs(out, output, &json!([v]))
        }
        Command::Subs(SubsCommand::Update {
            sub,
            ack_timeout_ms,
            max_attempts,
            dead_letter_topic,
            no_dead_letter_topic,
            max_in_flight_records,
        }) => {
            let dead_letter_topic = if *no_dead_letter_topic {
                Some(Value::Null)
            } else {
                dead_letter_topic.as_ref().map(|v| json!(v))
            };
            let body = given([
                (
                    "max_in_flight_records",
                    max_in_flight_records.map(|v| json!(v)),
                ),
                ("ack_timeout_ms", ack_timeout_ms.map(|v| json!(v))),
                ("max_attempts", max_attempts.map(|v| json!(v))),
                ("dead_letter_topic", dead_letter_topic),
            ]);
            let v = admin()?.patch(&sub_path(sub), body).await?;
            print_subs(out, output, &json!([v]))
        }
        Command::Subs(SubsCommand::Delete(r)) => {
            admin()?.delete(&sub_path(r)).await?;
            print_done(
                out,
                output,
                &format!("subscription {}/{} deleted", r.topic, r.subscription),
            )
        }
        Command::Lag {
            topic,
            subscription,
            this_shard,
        } => {
            let path = match (topic, subscription) {
                (Some(t), Some(s)) => format!(
                    "{}/lag",
                    sub_path(&SubRef {
                        topic: t.clone(),
                        subscription: s.clone()
                    })
                ),
                _ => "/v1/lag".to_owned(),
            };
            if *this_shard {
                let v = admin()?.get(&path).await?;
                let v = if v.is_array() { v } else { json!([v]) };
                print_lag(out, output, &v)
            } else {
                let (v, missing) = cluster_lag(&admin()?, &path, token(&cli)?).await?;
                print_lag(out, output, &v)
                    .map_err(|e| AdminError::Transport(format!("writing the answer: {e}")))?;
                if missing > 0 {
                    // What is shown is incomplete: say so in the exit status too.
                    return Ok(ExitCode::FAILURE);
                }
                Ok(())
            }
        }
        Command::Seek(a) => {
            let mut body = match &a.target {
                SeekTarget { to: Some(to), .. } => json!({ "to": to }),
                SeekTarget {
                    timestamp: Some(ts),
                    ..
                } => json!({ "timestamp_ms": parse_time(ts)? }),
                SeekTarget { since: Some(d), .. } => {
                    let at = SystemTime::now().checked_sub(*d).unwrap_or(UNIX_EPOCH);
                    json!({ "timestamp_ms": millis(at) })
                }
                SeekTarget { offsets, .. } => {
                    let m: serde_json::Map<String, Value> = offsets
                        .iter()
                        .map(|(p, o)| (p.to_string(), json!(o)))
                        .collect();
                    json!({ "offsets": m })
                }
            };
            if !a.partitions.is_empty() {
                body["partitions"] = json!(a.partitions);
            }
            let v = admin()?
                .post(&format!("{}/seek", sub_path(&a.sub)), body)
                .await?;
            print_json_or(out, output, &v, || {
                let seeks = v["seeks"].as_object().cloned().unwrap_or_default();
                let mut s = String::new();
                for (p, seek) in seeks {
                    s.push_str(&format!(
                        "partition {p}: seek #{} to offset {}\n",
                        seek["generation"], seek["offset"]
                    ));
                }
                s
            })
        }
        Command::Redrive { sub, batch } => {
            let admin = admin()?;
            let (mut scanned, mut redriven) = (0u64, 0u64);
            // Bounded: each call reads at least one dead letter or completes.
            for _ in 0..100_000 {
                let v = admin
                    .post_slow(
                        &format!("{}/redrive", sub_path(sub)),
                        json!({ "max_records": batch }),
                    )
                    .await?;
                scanned += v["scanned"].as_u64().unwrap_or(0);
                redriven += v["redriven"].as_u64().unwrap_or(0);
                if v["position_saved"] == json!(false) && v["redriven"].as_u64() > Some(0) {
                    return Err(AdminError::Transport(format!(
                        "the subscription changed during the redrive: {redriven} records were \
                         published, but a next redrive would publish them again; stopping"
                    )));
                }
                if v["complete"].as_bool().unwrap_or(true) {
                    break;
                }
                if v["scanned"].as_u64() == Some(0) {
                    return Err(AdminError::Transport(format!(
                        "the redrive makes no progress (the dead-letter topic does not answer?); \
                         {redriven} redriven so far, run it again later"
                    )));
                }
                eprintln!("fanout: {scanned} dead letters read, {redriven} redriven so far...");
            }
            let summary = json!({ "scanned": scanned, "redriven": redriven });
            print_json_or(out, output, &summary, || {
                format!(
                    "{redriven} records redriven into {}/{} ({scanned} dead letters read)\n",
                    sub.topic, sub.subscription
                )
            })
        }
        Command::Pause(r) => {
            let v = admin()?
                .post(&format!("{}/pause", sub_path(r)), json!({}))
                .await?;
            print_json_or(out, output, &v, || {
                format!("{}/{} paused\n", r.topic, r.subscription)
            })
        }
        Command::Tail {
            topic,
            from_beginning,
            count,
        } => {
            let discovery = discovery(&cli)?;
            let admin = admin()?;
            let name = format!("tail-{}-{:08x}", std::process::id(), rand::random::<u32>());
            let subs = format!("/v1/topics/{}/subscriptions", segment(topic));
            let start = if *from_beginning {
                "earliest"
            } else {
                "latest"
            };
            // Listening before the subscription exists: any way this ends deletes it.
            let stop = stop_signals();
            admin
                .post(&subs, json!({ "name": name, "start": start }))
                .await?;
            eprintln!("fanout: following {topic} through the temporary subscription {name}");
            let code = tokio::select! {
                code = subscribe(discovery, topic, &name, *count, 500, false, output, out) => code,
                () = stop => ExitCode::SUCCESS,
            };
            if let Err(e) = admin.delete(&format!("{subs}/{}", segment(&name))).await {
                eprintln!(
                    "fanout: could not delete the temporary subscription ({e}); delete it with: \
                     fanout subs delete --topic {topic} --subscription {name}"
                );
            }
            return Ok(code);
        }
        Command::Resume(r) => {
            let v = admin()?
                .post(&format!("{}/resume", sub_path(r)), json!({}))
                .await?;
            print_json_or(out, output, &v, || {
                format!("{}/{} resumed\n", r.topic, r.subscription)
            })
        }
    };
    answer.map_err(|e| AdminError::Transport(format!("writing the answer: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

/// A JSON object of the fields that are given.
fn given<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .collect(),
    )
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 or milliseconds since the Unix epoch.
fn parse_time(s: &str) -> Result<i64, AdminError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s).map(millis).map_err(|e| {
        AdminError::Transport(format!(
            "--timestamp {s:?}: {e} (RFC 3339 or epoch milliseconds)"
        ))
    })
}

fn print_done(out: &mut (dyn Write + Send), output: Output, what: &str) -> std::io::Result<()> {
    match output {
        Output::Json => writeln!(out, "{}", json!({ "done": what })),
        Output::Pretty => writeln!(out, "{what}"),
    }
}

fn print_json_or(
    out: &mut (dyn Write + Send),
    output: Output,
    v: &Value,
    pretty: impl FnOnce() -> String,
) -> std::io::Result<()> {
    match output {
        Output::Json => writeln!(out, "{v}"),
        Output::Pretty => write!(out, "{}", pretty()),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints rows (objects) as an aligned table of `columns`, or as JSON.
fn table(
    out: &mut (dyn Write + Send),
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_uppercase()).collect())
    )?;
    for r in rows {
        writeln!(out, "{}", line(r.clone()))?;
    }
    Ok(())
}

fn print_table(
    out: &mut (dyn Write + Send),
    output: Output,
    v: &Value,
    columns: &[&str],
) -> std::io::Result<()> {
    if output == Output::Json {
        return writeln!(out, "{v}");
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| columns.iter().map(|c| cell(&o[*c])).collect())
                .collect()
        })
        .unwrap_or_default();
    table(out, columns, &rows)
}

fn print_subs(out: &mut (dyn Write + Send), output: Output, v: &Value) -> std::io::Result<()> {
    if output == Output::Json {
        return writeln!(out, "{v}");
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    vec![
                        cell(&s["topic"]),
                        cell(&s["name"]),
                        cell(&s["delivery"]["ordering"]),
                        if s["paused"] == json!(true) {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        cell(&s["streams"]),
                        cell(&s["unacked"]),
                        cell(&s["delivery"]["dead_letter_topic"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        out,
        &[
            "topic",
            "subscription",
            "ordering",
            "paused",
            "streams",
            "unacked",
            "dead_letter_topic",
        ],
        &rows,
    )
}

/// Asks every shard `GET /v1/shards` lists for `path` (a lag view, or a list of them) and
/// merges the answers per subscription; each partition row names its shard, and a shard's
/// rows are those of the partitions Kafka assigned it (during a handover two shards may
/// both still list one). A shard that does not answer is reported on stderr and counted:
/// its partitions are missing.
async fn cluster_lag(
    first: &AdminClient,
    path: &str,
    token: Option<String>,
) -> Result<(Value, usize), AdminError> {
    let shards = first.get("/v1/shards").await?;
    let mut merged: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut missing = 0;
    for shard in shards.as_array().into_iter().flatten() {
        let id = shard["id"].as_str().unwrap_or("?").to_owned();
        let Some(addr) = shard["admin_address"].as_str().filter(|a| !a.is_empty()) else {
            eprintln!("fanout: shard {id} lists no admin address; its partitions are missing");
            missing += 1;
            continue;
        };
        let base = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("{}://{addr}", first.scheme())
        };
        let answer = match AdminClient::new(&base, token.clone()) {
            Ok(c) => c.get(path).await,
            Err(e) => Err(e),
        };
        let views = match answer {
            Ok(v) if v.is_array() => v,
            Ok(v) => json!([v]),
            Err(e) => {
                eprintln!(
                    "fanout: shard {id} ({base}) did not answer: {e}; its partitions are missing \
                     (from outside the cluster, use --this-shard)"
                );
                missing += 1;
                continue;
            }
        };
        for view in views.as_array().into_iter().flatten() {
            let topic = view["topic"].as_str().unwrap_or_default().to_owned();
            let assigned = &shard["partitions"][&topic];
            let key = (
                topic.clone(),
                view["subscription"].as_str().unwrap_or_default().to_owned(),
            );
            let entry = merged.entry(key).or_insert_with(|| {
                json!({
                    "topic": view["topic"],
                    "subscription": view["subscription"],
                    "paused": view["paused"],
                    "streams": 0,
                    "lag": 0,
                    "partitions": [],
                })
            });
            entry["streams"] = json!(
                entry["streams"].as_u64().unwrap_or(0) + view["streams"].as_u64().unwrap_or(0)
            );
            if let Some(ps) = entry["partitions"].as_array_mut() {
                for p in view["partitions"].as_array().into_iter().flatten() {
                    let owned = assigned
                        .as_array()
                        .is_some_and(|a| a.contains(&p["partition"]));
                    if owned {
                        let mut p = p.clone();
                        p["shard"] = json!(id);
                        ps.push(p);
                    }
                }
                ps.sort_by_key(|p| p["partition"].as_i64());
            }
            let lag: i64 = entry["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["lag"].as_i64())
                .sum();
            entry["lag"] = json!(lag);
        }
    }
    Ok((Value::Array(merged.into_values().collect()), missing))
}

fn print_lag(out: &mut (dyn Write + Send), output: Output, v: &Value) -> std::io::Result<()> {
    if output == Output::Json {
        return writeln!(out, "{v}");
    }
    let mut rows = Vec::new();
    for s in v.as_array().into_iter().flatten() {
        for p in s["partitions"].as_array().into_iter().flatten() {
            rows.push(vec![
                cell(&s["topic"]),
                cell(&s["subscription"]),
                cell(&p["partition"]),
                cell(&p["cursor"]),
                cell(&p["log_end"]),
                cell(&p["lag"]),
                cell(&p["in_flight"]),
                p["oldest_unacked_age_ms"]
                    .as_u64()
                    .map_or_else(|| "-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                if p["catching_up"] == json!(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
                if s["paused"] == json!(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
                p["shard"].as_str().unwrap_or("-").to_owned(),
            ]);
        }
    }
    table(
        out,
        &[
            "topic",
            "subscription",
            "partition",
            "cursor",
            "log_end",
            "lag",
            "in_flight",
            "oldest_unacked",
            "catching_up",
            "paused",
            "shard",
        ],
        &rows,
    )
}

#[allow(clippy::too_many_arguments)]
async fn subscribe(
    discovery: Discovery,
    topic: &str,
    subscription: &str,
    count: Option<u64>,
    max_in_flight: u32,
    no_ack: bool,
    output: Output,
    out: &mut (dyn Write + Send),
) -> ExitCode {
    let cfg = SubscriberConfig::with_discovery(discovery, topic, subscription)
        .max_in_flight(max_in_flight);
    let mut sub = match Subscriber::connect(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fanout: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut seen = 0u64;
    let mut last_report = Instant::now();
    let code = loop {
        if count.is_some_and(|c| seen >= c) {
            break ExitCode::SUCCESS;
        }
        let next = tokio::select! {
            r = sub.next() => r,
            _ = tokio::signal::ctrl_c() => break ExitCode::SUCCESS,
        };
        match next {
            None => break ExitCode::SUCCESS,
            Some(Err(e)) => {
                eprintln!("fanout: {e}");
                break ExitCode::FAILURE;
            }
            Some(Ok(r)) => {
                if print_record(out, &r, output).is_err() {
                    // stdout closed (e.g. piped into head): stop quietly.
                    break ExitCode::SUCCESS;
                }
                if !no_ack {
                    sub.ack(&r);
                }
                seen += 1;
                if last_report.elapsed() > Duration::from_secs(5) {
                    let rate = seen as f64 / started.elapsed().as_secs_f64();
                    eprintln!("fanout: {seen} records ({rate:.0}/s)");
                    last_report = Instant::now();
                }
            }
        }
    };
    let _ = out.flush();
    sub.close().await;
    eprintln!(
        "fanout: {seen} records in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("fanout").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn dot_names_are_refused_before_any_request() {
        for (topic, sub) in [("..", "s"), ("orders", "."), ("...", "s")] {
            let cli = parse(&["subs", "show", "--topic", topic, "--subscription", sub]);
            assert!(check_names(&cli).is_err(), "{topic}/{sub}");
        }
        assert!(check_names(&parse(&["pause", "--topic", "a.b", "--subscription", "s"])).is_ok());
    }

    #[test]
    fn grpc_is_another_name_of_server() {
        let cli = parse(&[
            "--grpc",
            "dns://fanout-headless:50051",
            "subscribe",
            "--topic",
            "t",
            "--subscription",
            "s",
        ]);
        assert_eq!(cli.server, "dns://fanout-headless:50051");
    }

    #[tokio::test]
    async fn a_bad_server_is_refused_before_connecting() {
        let mut out = Vec::new();
        let code = run(
            [
                "fanout",
                "--server",
                "dns://no-port",
                "subscribe",
                "--topic",
                "t",
                "--subscription",
                "s",
            ],
            &mut out,
        )
        .await;
        assert_eq!(format!("{code:?}"), format!("{:?}", ExitCode::FAILURE));
        assert!(out.is_empty());
    }

    #[test]
    fn only_given_fields_are_sent() {
        assert_eq!(
            given([("a", Some(json!(1))), ("b", None), ("c", Some(Value::Null))]),
            json!({"a": 1, "c": null})
        );
    }
}
