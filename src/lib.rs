//! botfleet: supervised actix actors that share a bot fleet's state through Redis, and keep
//! working on an in-memory or file store while Redis is down.
//!
//! A host starts a [`Fleet`] from its [`Settings`] and calls the services through the handles
//! the fleet hands out: [`Fleet::scheduler`], [`Fleet::locks`], [`Fleet::shared_data`],
//! [`Fleet::hazards`], [`Fleet::heartbeat`], [`Fleet::cache`], [`Fleet::history`] and the
//! others. [`http::HttpApi`] serves the fleet over HTTP, as the `botfleet` daemon does.
//!
//! ```no_run
//! use botfleet::{Fleet, Settings};
//!
//! # async fn host() -> Result<(), Box<dyn std::error::Error>> {
//! let fleet = Fleet::start(Settings::load(None)?).await?; // storage, actors, supervision
//! let guard = fleet.locks().try_acquire("bet-lock:user-agent", std::time::Duration::from_secs(30)).await?;
//! fleet.shutdown().await?; // actors stopped in reverse order, the outbox flushed
//! # drop(guard);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! Modules depend on the ones above them in this table only (a test holds the code to it):
//!
//! | module | what it owns |
//! |---|---|
//! | [`clock`] | Unix milliseconds and the ISO-8601 forms of the seeds' records |
//! | [`settings`] | the settings tree, its loading from `settings.toml` and the environment, validation |
//! | [`storage`] | the one path to Redis (fred), the memory and file fallbacks, modes, outbox, replay |
//! | [`supervisor`] | restart policy, stable actor handles, health, ordered start and stop |
//! | [`actors`] | the services, one folder or file each (mounted from `actors/`); they use the three above |
//! | [`fleet`] | the [`Fleet`] handle: storage, actor system and supervision tree, started together |
//! | [`http`] | the HTTP API over a fleet: health, status, metrics, live stream, dashboard, bot control |
//!
//! The `botfleet` binary (daemon, command line, benchmarks) lives in `src/bin/botfleet/` and
//! uses this API only. `ARCHITECTURE.md` maps the actors, the messages between them and the
//! storage modes.
//!
//! # Logging
//!
//! botfleet logs through `tracing` and installs no subscriber: the host (or the daemon) does.
//! Every actor's spans and events use the same field names, so that one filter or one log
//! query works across actors:
//!
//! | field | what it holds | example |
//! |---|---|---|
//! | `actor` | the name of the actor the span belongs to | `fetcher`, `scheduler`, `locks` |
//! | `key` | the Redis key (or glob pattern) the operation touches | `bot:tasks:queue` |
//! | `backend` | the storage backend that served the call | `redis`, `memory`, `file` |
//! | `error` | the error, `Display`-formatted, on a failure event | `connection refused` |
//!
//! Levels: ERROR, an operator must act; WARN, degraded (Redis unreachable, a restart); INFO,
//! start, stop, mode change; DEBUG and TRACE, detail for whoever is investigating.
#![deny(missing_docs)]

#[path = "../actors/mod.rs"]
pub mod actors;
pub mod clock;
pub mod fleet;
pub mod http;
pub mod settings;
pub mod storage;
pub mod supervisor;

pub use fleet::{BlockingFleet, Fleet, FleetError, FleetHealth, FleetShutdown};
pub use settings::Settings;
