//! The actors of botfleet, one file or folder per service. They reach Redis only through
//! [`crate::storage::Storage`] and never depend on the fleet, the HTTP API or the binary: each
//! service uses only `clock`, `settings`, `storage`, `supervisor` and services listed before it
//! in the `LAYERS` table of the architecture test (`shared_data`, `scheduler` and `hazards` use
//! `locks`; `scheduler` and `hazards` use `history`).
//!
//! | module | service |
//! |---|---|
//! | [`storage_monitor`] | the recent storage events, for the status API |
//! | [`presence`] | this instance's record in Redis |
//! | [`locks`] | distributed locks: fencing, wait queues, watchdog |
//! | [`cache`] | cache-aside with a near cache, invalidated through pub/sub |
//! | [`shared_data`] | one fetcher per fleet, readers served from memory |
//! | [`scheduler`] | the task queue, bot state, sessions, events, periodic jobs |
//! | [`hazards`] | the hazard ticker, provably fair seeds, fairness records, game sessions |
//! | [`heartbeat`] | heartbeats, peers, identities, admin messages |
//! | [`history`] | the SQL archive of what leaves Redis |

pub mod cache;
pub mod hazards;
pub mod heartbeat;
pub mod history;
pub mod locks;
pub mod presence;
pub mod scheduler;
pub mod shared_data;
pub mod storage_monitor;
