//! `botfleet bench queue --via http --redis URL`: the peers' queue workload processed by
//! workers that use only the HTTP worker protocol, as a bot in another language would.
//!
//! Per scenario the benchmark starts what a user runs: a fleet on the given Redis (keys under
//! `{bench-queue-http-SCENARIO-PID}`, history off, completed tasks removed, task types
//! `["noop"]`) and its HTTP API on a free loopback port, with keep-alive on (trusted clients
//! making many requests: `api.keep_alive_ms`). It enqueues the tasks through the fleet's
//! scheduler as the in-process variant does, then runs `botfleet task work`'s loop ([`work`])
//! with `--concurrency` slots and a job that does nothing: the tasks finished are reported
//! with the next claim (its `report` list), so a request both completes tasks and claims
//! more. Everything runs in this one
//! process, on the machine's cores, as a daemon and its worker would on one host.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::watch;

use super::queue::{QueueBench, QueueBenchError};
use crate::client::Daemon;
use crate::work::{work, Claimed, Job, Stop, Summary, WorkOptions};
use botfleet::actors::scheduler::{queue_prefix, NewTask};
use botfleet::http::HttpApi;
use botfleet::settings::Settings;
use botfleet::storage::Mode;
use botfleet::Fleet;

/// How often the wait for the last task checks the worker's end and the time limit.
const CHECK: Duration = Duration::from_millis(100);

/// A job that does nothing.
struct Noop;

impl Job for Noop {
    fn run(&self, _task: &Claimed) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> QueueBenchError {
    QueueBenchError::Http(format!("{what}: {e}"))
}

/// Runs the three scenarios through HTTP workers, printing one JSON line each through `out`.
pub async fn run(
    bench: &QueueBench,
    mut out: impl FnMut(serde_json::Value),
) -> Result<(), QueueBenchError> {
    let n = bench.tasks.max(1);
    let conc = bench.concurrency.max(1);
    for scenario in ["seq-add", "bulk-add", "priority"] {
        let base = format!("bench-queue-http-{scenario}-{}", std::process::id());
        let mut settings = Settings::default();
        settings.storage.redis.url = bench.redis_url.clone();
        // A loaded 2-core machine must not look like an outage half-way through.
        settings.storage.redis.timeout_ms = 5_000;
        let prefix = queue_prefix(&base);
        bench
            .last_known
            .apply(&mut settings.storage, &format!("{prefix}*"));
        settings.keys.prefix = prefix;
        settings.scheduler.completed_ttl_secs = 0;
        settings.scheduler.task_types = vec!["noop".into()];
        settings.history.enabled = false;
        settings.api.bind = "127.0.0.1:0".into();
        settings.api.keep_alive_ms = 60_000;
        let fleet = Fleet::start(settings)
            .await
            .map_err(|e| failed("start the fleet", e))?;
        if fleet.storage().mode() != Mode::Redis {
            fleet.shutdown().await.ok();
            return Err(failed(
                "--redis",
                format!("{} does not answer", bench.redis_url),
            ));
        }
        let http = HttpApi::start(fleet.clone()).map_err(|e| failed("start the HTTP API", e))?;
        let scheduler = fleet.scheduler();
        let task = |i: usize| {
            let t = NewTask::new("noop", &json!({ "i": i, "payload": "x".repeat(100) }));
            if scenario == "priority" {
                t.priority(1 + (i % 10) as i64)
            } else {
                t
            }
        };
        let t0 = Instant::now();
        if scenario == "seq-add" {
            for i in 0..n {
                scheduler.enqueue(task(i)).await?;
            }
        } else {
            for start in (0..n).step_by(1_000) {
                let batch = (start..(start + 1_000).min(n)).map(task).collect();
                scheduler.enqueue_bulk(batch).await?;
            }
        }
        let enqueue = t0.elapsed();

        let daemon = Daemon::new(&format!("http://{}", http.local_addr()), None)
            .map_err(|e| failed("HTTP client", e))?;
        let options = WorkOptions {
            types: vec!["noop".into()],
            concurrency: conc,
            lease_ms: None,
            wait_ms: 1_000,
        };
        let summary = Arc::new(Summary::default());
        let (stop_tx, stop_rx) = watch::channel(Stop::Run);
        let t1 = Instant::now();
        let worker = {
            let summary = summary.clone();
            tokio::spawn(
                async move { work(&daemon, &options, Arc::new(Noop), stop_rx, summary).await },
            )
        };
        let limit = Duration::from_secs(300);
        let done = || summary.completed.load(Ordering::Relaxed) as usize;
        // Woken by each request's outcomes (a timer of its own would wake a thread every
        // millisecond, more often than the worker makes requests); the worker's end is
        // noticed within CHECK.
        loop {
            let changed = summary.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done() >= n || t1.elapsed() >= limit || worker.is_finished() {
                break;
            }
            let _ = tokio::time::timeout(CHECK, changed).await;
        }
        let process = t1.elapsed();
        let _ = stop_tx.send(Stop::Drain);
        let worked = worker.await.map_err(|e| failed("the worker", e))?;
        worked.map_err(|e| failed("the worker", e))?;
        if done() < n {
            return Err(QueueBenchError::Stalled {
                scenario,
                done: done(),
                tasks: n,
                secs: limit.as_secs(),
            });
        }
        let counts = scheduler.counts().await?;
        let left = counts.pending + counts.processing + counts.delayed + counts.dead;
        out(json!({
            "peer": "botfleet", "bench": "queue", "via": "http", "scenario": scenario, "n": n,
            "concurrency": conc, "last_known": bench.last_known.name(),
            "enqueue_per_s": (n as f64 / enqueue.as_secs_f64()).round(),
            "process_per_s": (n as f64 / process.as_secs_f64()).round(),
            "lost": summary.lost.load(Ordering::Relaxed),
            "left_in_queue": left,
        }));
        http.stop().await;
        fleet
            .shutdown()
            .await
            .map_err(|e| failed("stop the fleet", e))?;
    }
    Ok(())
}
