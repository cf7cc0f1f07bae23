//! botfleet's integration tests, as one test binary: one build, one link, one copy of the
//! support code, however many suites there are.
//!
//! Every suite is a module; nextest names a test `SUITE::TEST` (`locks::waiters_are_served_in_order`),
//! so `cargo nextest run -E 'test(/^locks::/)'` runs one suite. Suites that need a second
//! process run one of this binary's own `#[ignore]`d tests as a child ([`support::role`]).
//!
//! | suite | what it covers |
//! |---|---|
//! | [`architecture`] | the module graph: allowed edges between the crate's modules, no cycle, fred only in storage |
//! | [`settings`] | loading `settings.toml` and the environment; every problem reported at once |
//! | [`cli_config`] | `botfleet config check` as a user runs it: the built binary, exit codes |
//! | [`cli_exit`] | bad usage and bad settings exit 2 naming the key or argument: the built binary |
//! | [`harness`] | the test harness itself: servers started, killed, frozen, restarted, reaped |
//! | [`storage_parity`] | one table of operations against Redis, the memory fallback and the file fallback |
//! | [`storage_failover`] | outages under the storage handle: kill -9, SIGSTOP, restarts empty, replay |
//! | [`last_known`] | last-known state through an outage: answers marked stale, decisions, convergence |
//! | [`storage_file_crash`] | the file fallback across `kill -9` of the process while Redis is down |
//! | [`topologies`] | Redis Cluster and Sentinel under the storage handle |
//! | [`scale`] | a master of Sentinel or Cluster killed under load; several daemons on one Redis |
//! | [`supervisor`] | supervision with fault-injecting actors: panics, hangs, restart intensity |
//! | [`supervised_work`] | a panic injected into each built-in actor's work: reported, restarted, resumed |
//! | [`supervisor_threads`] | starting and stopping an actor system leaves no thread behind |
//! | [`fleet`] | the `Fleet` embedded in a host runtime: start, stop, health, host actors |
//! | [`locks`] | mutual exclusion across processes, fencing, the watchdog, outages |
//! | [`fences`] | fencing tokens across a Redis restarted empty or failed over to a stale replica |
//! | [`scheduler`] | the task queue: order, reliability, retries, dead letters, periodic jobs, outages |
//! | [`scheduler_parity`] | the scheduler's Lua scripts and their Rust twins answer alike |
//! | [`shared_data`] | the fetcher and readers: leader election, freshness, fallbacks |
//! | [`sidecar_data`] | the sidecar's data routes over real HTTP: a seed writer feeding a daemon without a source, admin messages to an HTTP consumer across a crash, identities, heartbeats, peers |
//! | [`sidecar_games`] | game sessions and fairness over HTTP: two daemons on one session, a round played and verified, bad input; the cache's figures |
//! | [`hazards`] | the hazard ticker, provably fair seeds, fairness records, game sessions |
//! | [`heartbeat`] | heartbeats, the peer monitor, identities, admin messages |
//! | [`native_commands`] | the server named at connection; native commands and their scripts alike on one Valkey; `wait_aof` |
//! | [`records`] | shared records changed by several processes: compare-and-set, stale replays refused |
//! | [`cache`] | the cache service: one loader per key, invalidation across processes |
//! | [`history`] | the SQL archive on SQLite and PostgreSQL, its outages, `botfleet history` |
//! | [`http_api`] | the HTTP API over real sockets, and the commands that talk to it |
//! | [`http_limits`] | the HTTP server's bounds: stalled bodies closed in time, `/health` during a flood |
//! | [`clients`] | the Python and TypeScript clients (`clients/`) against the built daemon: their own test programs, a seed bot, a killed consumer, a Redis restart |
//! | [`sidecar_locks`] | the HTTP lock API and `botfleet lock run` against the built daemon: exclusion with seed `SET NX`, fences, expiry, kill -9, 503 off Redis |
//! | [`handlers`] | `[[scheduler.handlers]]`: commands and webhooks run tasks in the built daemon; bad entries refuse the start |
//! | [`daemon`] | `botfleet run` as a process: signals, exit codes, graceful stop |
//! | [`dashboard`] | the dashboard page in headless Chromium |
//! | [`task_worker`] | the HTTP worker protocol and `botfleet task work`: exactly once, retries, dead letters, kill -9, stale leases, the long poll, bad input, outages |
//!
//! The Redis suites start their server through [`support::TestRedis`], which
//! `BOTFLEET_TEST_REDIS=standalone|valkey|cluster|sentinel` switches; `scripts/test.sh` runs them on
//! each deployment.

mod support;

mod architecture;
mod cache;
mod cli_config;
mod cli_exit;
mod clients;
mod daemon;
mod dashboard;
mod fences;
mod fleet;
mod handlers;
mod harness;
mod hazards;
mod heartbeat;
mod history;
mod http_api;
mod http_limits;
mod last_known;
mod locks;
mod native_commands;
mod openapi;
mod records;
mod scale;
mod scheduler;
mod scheduler_parity;
mod settings;
mod shared_data;
mod sidecar_data;
mod sidecar_games;
mod sidecar_locks;
mod storage_failover;
mod storage_file_crash;
mod storage_parity;
mod supervised_work;
mod supervisor;
mod supervisor_threads;
mod task_worker;
mod topologies;
