//! The actors of botfleet, one file each. They reach Redis only through
//! [`crate::storage::Storage`] and never depend on the daemon, HTTP or CLI code.

pub mod cache;
pub mod hazards;
pub mod heartbeat;
pub mod history;
pub mod locks;
pub mod presence;
pub mod scheduler;
pub mod shared_data;
pub mod storage_monitor;
