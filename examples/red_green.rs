//! The red/green bots of seed 000 on botfleet: a simulated game API on a free local port (a
//! new round every 3 s, in the seed's JSON shape), one fetcher and the four language readers
//! (`[EN]`, `[VI]`, `[JP]`, `[ID]`), printing the seed's status lines every second.
//!
//! ```sh
//! cargo run --example red_green                                       # in-memory store
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example red_green      # with Redis
//! cargo run --example red_green -- 30                                 # run 30 s (default 15)
//! ```
//!
//! With Redis, a bot in any language reads the same snapshot meanwhile:
//! `redis-cli GET fivem_red_green_shared_data`.

#[path = "../tests/it/support/http.rs"]
#[allow(dead_code)]
mod http;

use std::time::{Duration, Instant};

use botfleet::actors::shared_data::Origin;
use botfleet::{Fleet, Settings};
use http::{HttpReply, HttpServer};
use serde_json::json;

/// Length of a round of the simulated game.
const ROUND: Duration = Duration::from_secs(3);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    // The game API: round N starts every ROUND; its result is derived from N.
    let epoch = Instant::now();
    let api = HttpServer::start(move |_| {
        let issue = 20_250_000 + epoch.elapsed().as_secs() / ROUND.as_secs();
        let value = format!("{}", issue % 1_000);
        let color = if issue.is_multiple_of(2) {
            "Green"
        } else {
            "Red"
        };
        HttpReply::json(
            json!({"code": 0, "data": {"records": [
                {"issue": issue, "value": value, "resultFormatValueI18n": ["Small", color]}
            ]}})
            .to_string(),
        )
    })
    .await;

    let mut settings = Settings::default();
    match std::env::var("REDIS_URL") {
        Ok(url) => settings.storage.redis.url = url,
        // No REDIS_URL: the in-memory store alone, never whatever listens on the default port.
        Err(_) => settings.storage.redis.enabled = false,
    }
    let shared = &mut settings.shared_data;
    shared.enabled = true;
    shared.source.url = api.url("/api/game/history");
    shared.source.query.push(("gameCode".into(), "RG5M".into()));
    shared.fetch_interval_ms = 1_000;
    shared.fresh_ms = 10_000;
    let fleet = Fleet::start(settings).await?;
    let data = fleet.shared_data();
    println!(
        "game API on {}; storage {}",
        api.url("/"),
        fleet.storage().mode()
    );

    let mut written = 0;
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fetcher = data.metrics().fetcher;
        if fetcher.writes > written {
            written = fetcher.writes;
            println!("[EN] Shared data updated to Redis successfully");
        }
        for reader in data.readers() {
            let name = reader.name().to_string();
            match reader.read().await {
                Ok(reading) => {
                    let p = &reading.snapshot.processed_data;
                    let status = match reading.origin {
                        Origin::Memory | Origin::Redis => format!(
                            "Shared data read from Redis successfully (updated {}ms ago)",
                            reading.age_ms
                        ),
                        Origin::Direct => "Redis data is stale, using direct API".into(),
                        Origin::Stale => {
                            format!("Serving the last snapshot ({}ms old)", reading.age_ms)
                        }
                        Origin::Legacy => "Read the legacy key".into(),
                    };
                    println!(
                        "[{name}] {status} | issue {} {} result {}",
                        p["issue_number"],
                        p["colors"].as_str().unwrap_or(""),
                        p["result_format"]
                    );
                }
                Err(e) => println!("[{name}] Redis unavailable, using direct API: {e}"),
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&data.metrics()).unwrap_or_default()
    );
    println!("API requests: {}", api.requests());
    fleet.shutdown().await?;
    Ok(())
}
