//! botfleet: supervised actix actors that share a bot fleet's state through Redis, and keep
//! working on an in-memory or file store while Redis is down.
//!
//! # Layout
//!
//! | module | what it owns |
//! |---|---|
//! | [`settings`] | the settings tree, its loading from `settings.toml` and the environment, validation |
//! | [`storage`] | the one path to Redis (fred), the memory and file fallbacks, modes, outbox, replay |
//! | [`supervisor`] | restart policy, stable actor handles, health, ordered start and stop |
//! | [`actors`] | the actors (mounted from `actors/`); they depend on `storage` and `supervisor` only |
//! | [`mod@bench`] | `botfleet bench ...`: benchmarks printing one JSON line per scenario |
//! | [`fleet`] | the `Fleet` handle a host starts: storage, actor system, supervision tree |
//! | [`daemon`] | `botfleet run`: signals, graceful stop, exit codes |
//! | [`cli`] | the command line: parsing, `config check`, exit codes |
//! | [`telemetry`] | tracing set-up and the typed events that log and count |
//! | [`http`] | the daemon's HTTP API: health, status, metrics, live stream, dashboard |
//!
//! See `ARCHITECTURE.md` for the actors, the messages between them and the storage modes.
#![deny(missing_docs)]

#[path = "../actors/mod.rs"]
pub mod actors;
pub mod bench;
pub mod cli;
pub mod daemon;
pub mod fleet;
pub mod http;
pub mod settings;
pub mod storage;
pub mod supervisor;
pub mod telemetry;

pub use fleet::{BlockingFleet, Fleet, FleetError, FleetHealth};
pub use settings::Settings;
