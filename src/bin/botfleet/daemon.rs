//! `botfleet run`: the daemon.
//!
//! Starts a [`Fleet`] on a multi-threaded tokio runtime and runs until SIGINT or SIGTERM, then
//! stops gracefully: actors in reverse order within their deadline, the outbox flushed to Redis
//! (or kept in the file store). A second signal during the graceful stop quits at once. When
//! the supervision tree gives up (restart intensity exceeded) the daemon exits non-zero so
//! that a process manager restarts it. The HTTP API ([`botfleet::http`]) serves on
//! `api.bind` while the fleet runs and stops before it; the address is bound before the fleet
//! starts, so that one in use or not local exits 2 at once, naming `api.bind`.

use std::time::Duration;

use botfleet::http::HttpApi;
use botfleet::{Fleet, FleetError, Settings};
use tokio::signal::unix::{signal, SignalKind};

use crate::exit::Exit;

/// Runs the daemon until a signal or a fatal failure; returns the process exit code.
pub fn run(settings: Settings) -> Exit {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_name("botfleet")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the tokio runtime");
            return Exit::Failure;
        }
    };
    let code = runtime.block_on(serve(settings));
    runtime.shutdown_timeout(Duration::from_millis(500));
    code
}

async fn serve(settings: Settings) -> Exit {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers");
            return Exit::Failure;
        }
    };
    // api.bind is checked before anything starts: an address in use or not local is bad
    // settings, not a failure of a fleet that started and stopped for nothing.
    let listener = match HttpApi::bind(&settings.api.bind) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "cannot start: api.bind");
            eprintln!("botfleet: {e}");
            return Exit::Usage;
        }
    };
    let fleet = match Fleet::start(settings).await {
        Ok(fleet) => fleet,
        Err(FleetError::Storage(e)) => {
            tracing::error!(error = %e, "cannot start: storage");
            eprintln!("botfleet: {e}");
            return Exit::Usage;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("botfleet: {e}");
            return Exit::Failure;
        }
    };
    let http = match HttpApi::builder(fleet.clone()).listener(listener).start() {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the HTTP API");
            eprintln!("botfleet: {e}");
            let _ = fleet.shutdown().await;
            return Exit::Failure;
        }
    };
    tracing::info!(instance = %fleet.instance(), "daemon running; SIGINT or SIGTERM stops it");
    let outcome = tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        _ = int.recv() => Ok("SIGINT"),
        result = fleet.wait() => Err(result),
    };
    http.stop().await;
    match outcome {
        Ok(signal_name) => {
            tracing::info!(
                signal = signal_name,
                "stopping: a second signal quits at once"
            );
            let stop = fleet.shutdown();
            tokio::select! {
                report = stop => match report {
                    Ok(report) if report.flushed => Exit::Ok,
                    Ok(report) => {
                        eprintln!("botfleet: {} writes could not reach redis and are lost", report.unflushed_writes);
                        Exit::Unflushed
                    }
                    Err(e) => {
                        eprintln!("botfleet: {e}");
                        Exit::Failure
                    }
                },
                _ = term.recv() => Exit::Interrupted,
                _ = int.recv() => Exit::Interrupted,
            }
        }
        Err(result) => {
            let message = match result {
                Ok(()) => "the supervision tree stopped".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::error!(error = %message, "runtime failure: exiting so that a process manager restarts botfleet");
            eprintln!("botfleet: {message}");
            let _ = fleet.shutdown().await;
            Exit::Failure
        }
    }
}
