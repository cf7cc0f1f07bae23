//! [`WriteLoad`]: tasks that write through a storage handle until stopped and record every
//! write they were told succeeded, to check afterwards that an outage or a fail-over lost none.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use botfleet::storage::Storage;

use super::poll::poll_until_async;

/// One write the storage acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    pub key: String,
    pub value: String,
    /// When the writer got the acknowledgement.
    pub at: Instant,
}

/// What a load reports once stopped: every acknowledged write, the errors callers saw, and
/// the slowest call.
pub type LoadReport = (Vec<Acked>, u64, Duration);

/// Write tasks; key `PREFIX:T:I` gets value `vI`.
pub struct WriteLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handles: Vec<tokio::task::JoinHandle<LoadReport>>,
}

impl WriteLoad {
    /// Starts `tasks` writers with keys under `prefix`, each `SET` with `ttl`. With `pace`
    /// each writer waits that long between writes (a steady rate, so that an outage's outbox
    /// stays small); without it each writes as fast as it is answered.
    pub fn start(
        storage: &Storage,
        tasks: usize,
        prefix: &str,
        ttl: Option<Duration>,
        pace: Option<Duration>,
    ) -> WriteLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let handles = (0..tasks)
            .map(|t| {
                let (storage, stop, acked) = (storage.clone(), stop.clone(), acked.clone());
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    let (mut errors, mut slowest, mut i) = (0, Duration::ZERO, 0u64);
                    let mut interval = pace.map(tokio::time::interval);
                    if let Some(interval) = interval.as_mut() {
                        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(interval) = interval.as_mut() {
                            interval.tick().await;
                        }
                        let (key, value) = (format!("{prefix}:{t}:{i}"), format!("v{i}"));
                        let started = Instant::now();
                        match storage.set(&key, value.clone(), ttl).await {
                            Ok(()) => {
                                let at = Instant::now();
                                done.push(Acked { key, value, at });
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("caller error: {e}");
                                errors += 1;
                            }
                        }
                        slowest = slowest.max(started.elapsed());
                        i += 1;
                        if interval.is_none() {
                            tokio::task::yield_now().await;
                        }
                    }
                    (done, errors, slowest)
                })
            })
            .collect();
        WriteLoad {
            stop,
            acked,
            handles,
        }
    }

    /// Waits (at most 20 s) until `more` further writes were acknowledged.
    ///
    /// # Panics
    /// When the load makes no such progress.
    pub async fn wait_acked(&self, more: u64) {
        let target = self.acked.load(Ordering::Relaxed) + more;
        let acked = self.acked.clone();
        poll_until_async(Duration::from_secs(20), move || {
            let acked = acked.clone();
            async move { acked.load(Ordering::Relaxed) >= target }
        })
        .await
        .expect("the load makes progress");
    }

    /// Stops the writers and merges their reports.
    pub async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = (Vec::new(), 0, Duration::ZERO);
        for h in self.handles {
            // A writer task only panics if the test is already failing.
            let (done, errors, slowest) = h.await.expect("load task");
            all.0.extend(done);
            all.1 += errors;
            all.2 = all.2.max(slowest);
        }
        all
    }
}
