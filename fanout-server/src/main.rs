//! `fanout-server`: parse the configuration, set up logging, run the shard until SIGTERM or
//! Ctrl-C (a second signal exits at once).

use std::process::ExitCode;

use clap::Parser;
use fanout_server::app::{self, Listeners};
use fanout_server::config::Config;
use fanout_server::telemetry;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cfg = Config::parse();
    telemetry::init(cfg.log_format);
    if let Err(e) = cfg.validate() {
        eprintln!("fanout-server: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fanout-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listeners = Listeners::bind(cfg.grpc_listen, cfg.admin_listen).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        app::run(cfg, listeners, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fanout-server failed");
            eprintln!("fanout-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// First SIGTERM / SIGINT: graceful shutdown. Second: exit now.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received: shutting down (send again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    eprintln!("fanout-server: second signal, exiting now");
    std::process::exit(130);
}
