//! Test support shared by the integration tests: real `redis-server` processes on free loopback
//! ports, a raw RESP client to look at them without botfleet's own code, and bounded polling.
//!
//! Every suite of the test binary reaches it as `crate::support`.
//!
//! # Layout
//!
//! | module | what it owns |
//! |---|---|
//! | [`redis`] | [`RedisServer`]: start, kill, freeze, thaw, restart, inspect; cleanup on drop |
//! | [`cluster`] | [`RedisCluster`]: 3 masters + 3 replicas (or another shape), kill a master, wait for the fail-over, per-master command stats |
//! | [`sentinel`] | [`RedisSentinel`]: 1 master, 1 replica, 3 sentinels, optional passwords, kill the master, wait for the promotion |
//! | [`load`] | [`WriteLoad`]: writers through a storage handle that record every acknowledged write |
//! | [`deploy`] | [`TestRedis`]: the `BOTFLEET_TEST_REDIS=standalone\|cluster\|sentinel` switch the Redis suites start their server with |
//! | [`resp`] | [`RespValue`], encoding one command and parsing one reply (RESP2) |
//! | [`poll`] | [`poll_until`], [`poll_until_async`]: wait for a condition with a deadline |
//! | [`port`] | [`free_port`] and the reservation that keeps a server's port ours while it is down |
//! | [`process`] | spawning children that die with the test process, `/proc` liveness checks |
//! | [`postgres`] | [`postgres::PgDatabase`] (a throwaway database) and [`postgres::PrivatePostgres`] (a server to stop) |
//! | [`metrics`] | [`metrics::scrape`]: `/metrics` through a Prometheus text parser; [`metrics::sample`] |
//! | [`http`] | [`HttpServer`]: a real HTTP/1.1 server on loopback that counts requests and can go down |
//! | [`sidecar`] | [`sidecar::Sidecar`]: the built `botfleet run` on a free port, for the suites of its HTTP services and the commands that ask it |
//! | [`role`] | [`spawn_role`]: this binary's own `#[ignore]`d tests run as child processes |
//! | [`browser`] | [`browser::Browser`]: headless Chromium driven over the DevTools protocol through pipes |
//! | [`faulty`] | [`faulty::Faulty`]: an actor that panics, fails, hangs or refuses to stop on request |
//!
//! # Example
//!
//! ```ignore
//! let mut redis = RedisServer::builder().persistence(true).start()?;
//! assert!(redis.cmd(&["SET", "k", "v"]).is_ok());
//! redis.kill9();
//! redis.restart()?;
//! assert_eq!(redis.cmd(&["GET", "k"]), RespValue::bulk("v"));
//! ```

pub mod browser;
pub mod cluster;
pub mod deploy;
pub mod faulty;
pub mod http;
pub mod load;
pub mod metrics;
pub mod poll;
pub mod port;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod resp;
pub mod role;
pub mod sentinel;
pub mod sidecar;

pub use cluster::RedisCluster;
pub use deploy::{fit_settings, suite_settings, Inspect, TestRedis};
pub use http::{HttpReply, HttpServer};
pub use load::{Acked, WriteLoad};
pub use poll::{poll_until, poll_until_async};
pub use port::free_port;
pub use process::process_is_alive;
pub use redis::RedisServer;
pub use resp::RespValue;
pub use role::{role_command, spawn_role};
pub use sentinel::RedisSentinel;
