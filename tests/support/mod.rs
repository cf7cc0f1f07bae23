//! Test support shared by the integration tests: real `redis-server` processes on free loopback
//! ports, a raw RESP client to look at them without botfleet's own code, and bounded polling.
//!
//! Each integration test file uses it with `mod support;`. A test binary rarely needs every
//! item, hence the `dead_code` allowance for the whole module.
//!
//! # Layout
//!
//! | module | what it owns |
//! |---|---|
//! | [`redis`] | [`RedisServer`]: start, kill, freeze, thaw, restart, inspect; cleanup on drop |
//! | [`resp`] | [`RespValue`], encoding one command and parsing one reply (RESP2) |
//! | [`poll`] | [`poll_until`], [`poll_until_async`]: wait for a condition with a deadline |
//! | [`port`] | [`free_port`] and the reservation that keeps a server's port ours while it is down |
//! | [`process`] | spawning children that die with the test process, `/proc` liveness checks |
//! | [`http`] | [`HttpServer`]: a real HTTP/1.1 server on loopback that counts requests and can go down |
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
#![allow(dead_code, unused_imports)]

pub mod http;
pub mod poll;
pub mod port;
pub mod process;
pub mod redis;
pub mod resp;
pub mod role;

pub use http::{HttpReply, HttpServer};
pub use poll::{poll_until, poll_until_async, TimedOut, POLL_INTERVAL};
pub use port::free_port;
pub use process::process_is_alive;
pub use redis::{RedisServer, RedisServerBuilder};
pub use resp::RespValue;
pub use role::{role_command, spawn_role};
