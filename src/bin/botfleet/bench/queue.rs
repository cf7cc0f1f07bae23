//! `botfleet bench queue --redis URL`: the peers' queue workload (`../shared/peers`, BullMQ
//! and bullmq-official): N no-op tasks with the payload `{"i": i, "payload": "x" * 100}`, one
//! worker with 50 concurrent handlers, completed tasks removed. Scenarios `seq-add` (enqueue
//! one at a time), `bulk-add` (batches of 1,000), `priority` (bulk, priorities 1..10). One
//! JSON line each with `enqueue_per_s`, `process_per_s`, the Redis memory per waiting task and
//! the CPU time processing a task cost this process and the server (`client_cpu_us_per_task`,
//! `server_cpu_us_per_task`), with the script calls per task and Redis's time in them
//! (`script_calls_per_task`, `server_script_us_per_task`).
//! The scheduler runs with its reliability on (visibility deadlines, retries, dead letters).
//! `--queues Q` spreads the tasks over Q named queues (one scheduler each, keys under the
//! queue's hash tag), which on Redis Cluster shard over the masters; `scripts/bench-cluster.sh`
//! runs it on 1, 2 and 3 masters and reports each master's share of the commands.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Notify;

use super::LastKnownMode;
use botfleet::actors::scheduler::{NewTask, Scheduler, SchedulerError};
use botfleet::settings::{KeySettings, SchedulerSettings, StorageSettings};
use botfleet::storage::{KeySchema, Mode, Script, Storage, StorageError};

/// Options of the queue benchmark (`botfleet bench queue`).
#[derive(Debug, Clone, clap::Args)]
pub struct QueueBench {
    /// Server to use (keys under `bench-queue-` are overwritten).
    #[arg(long = "redis", value_name = "URL")]
    pub redis_url: String,
    /// Tasks per scenario.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Concurrent handlers.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Named queues the tasks are spread over; on Redis Cluster they shard over the masters
    /// (12 balances 1, 2, 3, 4 or 6 masters).
    // Round robin, each queue with its own scheduler and hash tag; the handlers are split
    // between them.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// The last-known copy: `off`, or `on` (as shipped: the queues' keys are remembered).
    #[arg(long, value_enum, default_value_t = LastKnownMode::On)]
    pub last_known: LastKnownMode,
    /// Who processes the tasks: `handlers` run in the benchmark's scheduler, or `http`:
    /// workers that speak only the HTTP worker protocol (claim, complete) to a fleet and its
    /// HTTP API, both started by the benchmark on the same Redis.
    #[arg(long, value_enum, default_value_t = Via::Handlers)]
    pub via: Via,
}

/// Who processes the benchmark's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// In-process handlers (`Scheduler::register_handler`).
    Handlers,
    /// `botfleet task work`'s loop over HTTP, against a fleet and HTTP API in this process.
    Http,
}

/// Names of `count` queues whose hash slots are spread evenly over the 16,384 slots: queue
/// `i` lands in the `i`-th of `count` equal slot ranges, so with masters that split the slots
/// evenly (as `redis-cli --cluster create` does) and `count` a multiple of their number,
/// each master serves the same number of queues.
pub fn spread_queue_names(base: &str, count: usize) -> Vec<String> {
    const SLOTS: usize = 16_384;
    let count = count.max(1);
    (0..count)
        .map(|i| {
            let (low, high) = (i * SLOTS / count, (i + 1) * SLOTS / count);
            (0u64..)
                .map(|j| format!("{base}-{i}-{j}"))
                .find(|name| (low..high).contains(&(botfleet::storage::hash_slot(name) as usize)))
                // Every range holds at least one slot and CRC16 reaches every slot within a
                // few thousand candidates, so the search ends.
                .unwrap_or_default()
        })
        .collect()
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueBenchError {
    /// The storage could not be opened, or Redis does not answer.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A scheduler call failed.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The fleet or its HTTP API could not start, or the workers gave up.
    #[error("{0}")]
    Http(String),
    /// The tasks were not all processed in time.
    #[error("{scenario}: {done} of {tasks} tasks processed after {secs} s")]
    Stalled {
        /// Scenario.
        scenario: &'static str,
        /// Processed.
        done: usize,
        /// Expected.
        tasks: usize,
        /// Waited.
        secs: u64,
    },
}

const USED_MEMORY: &str = r#"
local info = redis.call('INFO', 'memory')
return tonumber(string.match(info, 'used_memory:(%d+)'))
"#;

/// Runs the three scenarios, printing one JSON line each through `out`.
pub async fn run(
    bench: &QueueBench,
    mut out: impl FnMut(serde_json::Value),
) -> Result<(), QueueBenchError> {
    let n = bench.tasks.max(1);
    let conc = bench.concurrency.max(1);
    let memory = Script::new("bench-used-memory", USED_MEMORY, super::no_local_script);
    for scenario in ["seq-add", "bulk-add", "priority"] {
        let mut settings = StorageSettings::default();
        settings.redis.url = bench.redis_url.clone();
        // A loaded 2-core machine must not look like an outage half-way through.
        settings.redis.timeout_ms = 5_000;
        bench.last_known.apply(&mut settings, "bench-queue-*");
        let base = format!("bench-queue-{scenario}-{}", std::process::id());
        let keys = KeySchema::new(&KeySettings {
            prefix: botfleet::actors::scheduler::queue_prefix(&base),
            ..KeySettings::default()
        });
        let storage = Storage::open(&settings, &keys).await?;
        if storage.mode() != Mode::Redis {
            return Err(StorageError::Config {
                key: "--redis",
                message: format!("{} does not answer", bench.redis_url),
            }
            .into());
        }
        let sched_settings = SchedulerSettings {
            completed_ttl_secs: 0,
            ..SchedulerSettings::default()
        };
        let queues = bench.queues.max(1);
        let schedulers: Vec<Scheduler> = spread_queue_names(&base, queues)
            .iter()
            .map(|name| {
                Scheduler::for_queue(storage.clone(), sched_settings.clone(), "bench", name)
            })
            .collect();
        let task = move |i: usize| {
            let t = NewTask::new("noop", &json!({ "i": i, "payload": "x".repeat(100) }));
            if scenario == "priority" {
                t.priority(1 + (i % 10) as i64)
            } else {
                t
            }
        };
        let used = |storage: Storage, memory: Script| async move {
            storage
                .eval_on_redis(&memory, &[], &[])
                .await
                .map(|r| r.as_int())
                .unwrap_or(0)
        };
        let before = used(storage.clone(), memory.clone()).await;
        // The enqueuing loop runs on a worker of the runtime, as a bot's task would (and as
        // the lock scenarios' tasks do), not on the thread blocked on the runtime: each reply
        // would otherwise wake a thread outside the runtime's workers.
        let enqueuing = schedulers.clone();
        let enqueue = tokio::spawn(async move {
            let t0 = Instant::now();
            if scenario == "seq-add" {
                for i in 0..n {
                    enqueuing[i % queues].enqueue(task(i)).await?;
                }
            } else {
                for start in (0..n).step_by(1_000) {
                    let mut batches: Vec<Vec<NewTask>> = vec![Vec::new(); queues];
                    for i in start..(start + 1_000).min(n) {
                        batches[i % queues].push(task(i));
                    }
                    for (scheduler, batch) in enqueuing.iter().zip(batches) {
                        if !batch.is_empty() {
                            scheduler.enqueue_bulk(batch).await?;
                        }
                    }
                }
            }
            Ok::<_, SchedulerError>(t0.elapsed())
        })
        .await
        // Nothing aborts the task: an error here is its panic, passed on.
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let after = used(storage.clone(), memory.clone()).await;
        let done = Arc::new(AtomicUsize::new(0));
        let all_done = Arc::new(Notify::new());
        let cpu_before = super::CpuSample::take(&storage).await;
        let t1 = Instant::now();
        for scheduler in &schedulers {
            let (done, all_done) = (done.clone(), all_done.clone());
            scheduler.register_handler("noop", (conc / queues).max(1), move |_task| {
                let (done, all_done) = (done.clone(), all_done.clone());
                async move {
                    if done.fetch_add(1, Ordering::SeqCst) + 1 >= n {
                        all_done.notify_one();
                    }
                    Ok(())
                }
            })?;
        }
        let limit = Duration::from_secs(300);
        if tokio::time::timeout(limit, all_done.notified())
            .await
            .is_err()
        {
            return Err(QueueBenchError::Stalled {
                scenario,
                done: done.load(Ordering::SeqCst),
                tasks: n,
                secs: limit.as_secs(),
            });
        }
        let process = t1.elapsed();
        let cpu_after = super::CpuSample::take(&storage).await;
        let mut left = 0;
        for scheduler in &schedulers {
            scheduler.stop(Duration::from_secs(10)).await;
            let counts = scheduler.counts().await?;
            left += counts.pending + counts.processing + counts.delayed + counts.dead;
        }
        let mut line = json!({
            "peer": "botfleet", "bench": "queue", "scenario": scenario, "n": n,
            "concurrency": conc, "queues": queues, "last_known": bench.last_known.name(),
            "enqueue_per_s": (n as f64 / enqueue.as_secs_f64()).round(),
            "process_per_s": (n as f64 / process.as_secs_f64()).round(),
            "redis_bytes_per_waiting_task": ((after - before).max(0) as f64 / n as f64).round(),
            "left_in_queue": left,
        });
        // What processing cost each side per task (the server's figure is one master's).
        cpu_before.report(&cpu_after, n, "task", &mut line);
        out(line);
        storage.close().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_queue_names_fall_in_even_slot_ranges() {
        let names = spread_queue_names("q", 12);
        assert_eq!(names.len(), 12);
        for (i, name) in names.iter().enumerate() {
            let slot = botfleet::storage::hash_slot(name) as usize;
            assert!(
                (i * 16_384 / 12..(i + 1) * 16_384 / 12).contains(&slot),
                "{name}: {slot}"
            );
            // The queue's keys carry the name as their hash tag: one slot per queue.
            let prefix = botfleet::actors::scheduler::queue_prefix(name);
            assert_eq!(
                botfleet::storage::hash_slot(&format!("{prefix}:tasks:queue")),
                botfleet::storage::hash_slot(&format!("{prefix}:task:42"))
            );
        }
    }
}
