//! Seed 003 (AVIATOR bookmaker workers): simulated bookmaker workers write their rounds to a
//! real SQLite database through a batch writer and put the live view in the cache:
//! `round:BOOKMAKER:ID` (1 h), `last_round:BOOKMAKER` (30 s), `stats:BOOKMAKER` (60 s),
//! `stats:total` (60 s) and the hash `worker:states` (no TTL). A reader then prints the stats
//! from the cache and falls back to SQLite on a miss (through `Cache::get_or_load`).
//!
//! ```text
//! cargo run --example aviator_stats                      # no Redis: the in-memory fallback
//! REDIS_URL=redis://127.0.0.1:6400 cargo run --example aviator_stats -- /tmp/aviator.db
//! ```

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use botfleet::{Fleet, Settings};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

const BOOKMAKERS: &[&str] = &["Admiral", "Balkanbet", "Mozzart", "Meridian"];
const ROUNDS_PER_WORKER: u64 = 40;
const TTL_ROUND: Duration = Duration::from_secs(3_600);
const TTL_STATS: Duration = Duration::from_secs(60);
const TTL_LAST_ROUND: Duration = Duration::from_secs(30);
/// The batch writer commits every this many rounds, or when its queue runs dry.
const BATCH: usize = 25;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Round {
    round_id: u64,
    bookmaker: String,
    score: f64,
    players: u32,
    timestamp_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stats {
    rounds: u64,
    avg_score: f64,
    max_score: f64,
}

/// The batch writer: one thread owning the SQLite connection, committing rounds in
/// transactions of up to [`BATCH`].
fn batch_writer(path: PathBuf, rounds: mpsc::Receiver<Round>) -> rusqlite::Result<u64> {
    let mut db = Connection::open(path)?;
    let mut written = 0;
    let mut pending = Vec::with_capacity(BATCH);
    while let Ok(first) = rounds.recv() {
        pending.push(first);
        while pending.len() < BATCH {
            match rounds.try_recv() {
                Ok(round) => pending.push(round),
                Err(_) => break,
            }
        }
        let tx = db.transaction()?;
        for r in pending.drain(..) {
            tx.execute(
                "INSERT INTO rounds (round_id, bookmaker, score, players, timestamp_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.round_id as i64, r.bookmaker, r.score, r.players, r.timestamp_ms as i64],
            )?;
            written += 1;
        }
        tx.commit()?;
    }
    Ok(written)
}

/// The slow path: stats computed by SQLite.
fn stats_from_db(path: &PathBuf, bookmaker: Option<&str>) -> rusqlite::Result<Stats> {
    let db = Connection::open(path)?;
    let sql = "SELECT COUNT(*), COALESCE(AVG(score), 0), COALESCE(MAX(score), 0) FROM rounds WHERE ?1 IS NULL OR bookmaker = ?1";
    db.query_row(sql, params![bookmaker], |row| {
        Ok(Stats {
            rounds: row.get::<_, i64>(0)? as u64,
            avg_score: row.get(1)?,
            max_score: row.get(2)?,
        })
    })
}

async fn worker(
    fleet: Fleet,
    bookmaker: &'static str,
    db: mpsc::Sender<Round>,
) -> anyhow::Result<()> {
    let cache = fleet.cache();
    let storage = fleet.storage();
    storage
        .hset("worker:states", &[(bookmaker, "RUNNING")])
        .await?;
    let mut local = Stats::default();
    for round_id in 1..=ROUNDS_PER_WORKER {
        // A crash multiplier: 1.00 and up, heavy-tailed.
        let score = (100.0 / (1.0 - rand::random::<f64>() * 0.99)).floor() / 100.0;
        let round = Round {
            round_id,
            bookmaker: bookmaker.into(),
            score,
            players: rand::random::<u32>() % 500,
            timestamp_ms: botfleet::clock::now_ms(),
        };
        db.send(round.clone())?;
        let text = serde_json::to_string(&round)?;
        cache
            .set(&format!("round:{bookmaker}:{round_id}"), &text, TTL_ROUND)
            .await?;
        cache
            .set(&format!("last_round:{bookmaker}"), &text, TTL_LAST_ROUND)
            .await?;
        local.avg_score =
            (local.avg_score * local.rounds as f64 + score) / (local.rounds + 1) as f64;
        local.rounds += 1;
        local.max_score = local.max_score.max(score);
        cache
            .set(
                &format!("stats:{bookmaker}"),
                &serde_json::to_string(&local)?,
                TTL_STATS,
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    storage
        .hset("worker:states", &[(bookmaker, "IDLE")])
        .await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let given = std::env::args().nth(1).map(PathBuf::from);
    let path = given
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("aviator-{}.db", std::process::id())));
    Connection::open(&path)?.execute_batch(
        "CREATE TABLE IF NOT EXISTS rounds (round_id INTEGER, bookmaker TEXT, score REAL, players INTEGER, timestamp_ms INTEGER);
         CREATE INDEX IF NOT EXISTS rounds_bookmaker ON rounds (bookmaker);",
    )?;
    let mut settings = Settings::default();
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => settings.storage.redis.url = url,
        _ => settings.storage.redis.enabled = false,
    }
    let fleet = Fleet::start(settings).await?;
    println!(
        "storage mode: {}, database: {}",
        fleet.storage().mode(),
        path.display()
    );

    let (tx, rx) = mpsc::channel();
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || batch_writer(path, rx))
    };
    let workers: Vec<_> = BOOKMAKERS
        .iter()
        .map(|bm| tokio::spawn(worker(fleet.clone(), bm, tx.clone())))
        .collect();
    drop(tx);
    for w in workers {
        w.await??;
    }
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("batch writer panicked"))??;
    println!("batch writer committed {written} rounds");

    // stats:total is not written by the workers: the first read misses and SQLite answers.
    let cache = fleet.cache();
    let states = fleet.storage().hgetall("worker:states").await?;
    for _ in 0..2 {
        let total = cache
            .get_or_load("stats:total", TTL_STATS, || {
                let path = path.clone();
                async move {
                    let stats =
                        tokio::task::spawn_blocking(move || stats_from_db(&path, None)).await??;
                    anyhow::Ok(serde_json::to_string(&stats)?)
                }
            })
            .await?;
        println!("stats:total {total}");
    }
    // One bookmaker's stats evicted: the reader falls back to SQLite for it.
    cache.invalidate("stats:Mozzart").await?;
    for bm in BOOKMAKERS {
        let stats = cache
            .get_or_load(&format!("stats:{bm}"), TTL_STATS, || {
                let (path, bm) = (path.clone(), bm.to_string());
                async move {
                    let stats =
                        tokio::task::spawn_blocking(move || stats_from_db(&path, Some(&bm)))
                            .await??;
                    anyhow::Ok(serde_json::to_string(&stats)?)
                }
            })
            .await?;
        let last = cache
            .get(&format!("last_round:{bm}"), TTL_LAST_ROUND)
            .await?;
        let state = states.get(*bm).map(String::as_str).unwrap_or("?");
        println!(
            "{bm:<10} [{state}] stats {stats} last {}",
            last.as_deref().unwrap_or("-")
        );
    }
    println!("cache counters: {}", serde_json::to_string(&cache.stats())?);
    fleet.shutdown().await?;
    if given.is_none() {
        // A database of our own in the temporary directory: remove it.
        std::fs::remove_file(&path)?;
    }
    Ok(())
}
