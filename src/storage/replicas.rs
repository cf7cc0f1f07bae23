//! Which masters lost their replicas, for `storage.redis.wait_replicas`.
//!
//! Redis replicates asynchronously: what a master acknowledged in its last instant before
//! dying may not be on the replica promoted in its place. With `storage.redis.wait_replicas =
//! N`, after each write (an op, a script call, or a pipeline: once per master it wrote to) the
//! handle sends `WAIT N wait_timeout_ms` on the connection that carried it and acknowledges the
//! write only when `WAIT` returns. A write short of N replicas at the timeout is acknowledged
//! all the same (the master has it) and counted (`StorageStats::unreplicated_writes`); a `WAIT`
//! that fails is an outage like any command, and the write goes to the fallback and the
//! outbox. The price is a replication round trip per write, during which that connection
//! carries nothing else; validation therefore wants `wait_timeout_ms` below the command
//! timeout. The `scale` suite kills a Sentinel's or a Cluster's master under load with
//! `wait_replicas = 1` and finds every acknowledged write on the promoted replica.
//!
//! While a master has its replicas, `WAIT` answers in a replication round trip. Without them
//! (a replica died, or the master is a replica just promoted, alone until the old master
//! rejoins) every `WAIT` would block its connection for the whole timeout: writes crawl, and
//! what queues behind them on the connection (a `PING`, other callers' commands) times out and
//! reads as an outage, over and over.
//!
//! So a master whose `WAIT` came back short is marked as missing replicas (logged once, and
//! counted in `StorageStats::masters_missing_replicas`). Its writes then skip `WAIT`
//! (acknowledged by the master alone, counted as unreplicated), except one probe per interval
//! (twice `wait_timeout_ms`, at least 200 ms), whose full `WAIT` tells when the replicas are
//! back. The guarantee holds whenever the replicas are there; while they are not, no write
//! could have had it anyway.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// What to do about one write's `WAIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitPlan {
    /// Send `WAIT` with the full timeout.
    Wait,
    /// The master is missing replicas and another write probes them: skip `WAIT`, the write
    /// is unreplicated.
    Skip,
}

/// What a `WAIT`'s reply changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing: the master was and stays as it was.
    None,
    /// The master came back short for the first time: it is now missing replicas.
    Lost,
    /// The master was missing replicas and has them again.
    Regained,
}

/// Masters missing replicas (by address; `""` for the one master outside a Cluster), with
/// when the next probe of each is due.
#[derive(Debug)]
pub struct ReplicaWatch {
    missing: Mutex<HashMap<String, Instant>>,
    probe_every: Duration,
}

impl ReplicaWatch {
    /// A watch that probes a master missing replicas every `probe_every`.
    pub fn new(probe_every: Duration) -> Self {
        Self {
            missing: Mutex::new(HashMap::new()),
            probe_every,
        }
    }

    /// The interval between two probes of a master missing replicas.
    pub fn probe_every(&self) -> Duration {
        self.probe_every
    }

    /// How many masters are missing replicas.
    pub fn missing(&self) -> usize {
        self.missing.lock().len()
    }

    /// Whether any master is missing replicas: when none is, callers need not work out which
    /// master a write went to.
    pub fn any_missing(&self) -> bool {
        !self.missing.lock().is_empty()
    }

    /// The plan for a write to `master` at `now`. A master missing replicas whose probe is
    /// due gets one `Wait` (the probe), and the next probe is scheduled at once, so that
    /// concurrent writes skip meanwhile.
    pub fn plan(&self, master: &str, now: Instant) -> WaitPlan {
        let mut missing = self.missing.lock();
        match missing.get_mut(master) {
            None => WaitPlan::Wait,
            Some(due) if *due <= now => {
                *due = now + self.probe_every;
                WaitPlan::Wait
            }
            Some(_) => WaitPlan::Skip,
        }
    }

    /// Records a `WAIT` reply from `master` at `now`: `enough` when it counted the replicas
    /// asked for.
    pub fn record(&self, master: &str, enough: bool, now: Instant) -> Change {
        let mut missing = self.missing.lock();
        match (enough, missing.contains_key(master)) {
            (true, true) => {
                missing.remove(master);
                Change::Regained
            }
            (false, false) => {
                missing.insert(master.to_string(), now + self.probe_every);
                Change::Lost
            }
            _ => Change::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_millis(200);

    #[test]
    fn a_master_with_its_replicas_always_waits() {
        let watch = ReplicaWatch::new(EVERY);
        let t0 = Instant::now();
        assert_eq!(watch.plan("a", t0), WaitPlan::Wait);
        assert_eq!(watch.record("a", true, t0), Change::None);
        assert_eq!(watch.plan("a", t0), WaitPlan::Wait);
        assert!(!watch.any_missing());
    }

    #[test]
    fn a_short_reply_makes_writes_skip_until_one_probe_per_interval_waits() {
        let watch = ReplicaWatch::new(EVERY);
        let t0 = Instant::now();
        assert_eq!(watch.record("a", false, t0), Change::Lost);
        assert!(watch.any_missing());
        assert_eq!(watch.missing(), 1);
        // Other masters are not affected.
        assert_eq!(watch.plan("b", t0), WaitPlan::Wait);
        assert_eq!(watch.plan("a", t0), WaitPlan::Skip);
        assert_eq!(watch.plan("a", t0 + EVERY / 2), WaitPlan::Skip);
        // Once due, exactly one write probes; the others keep skipping.
        let due = t0 + EVERY;
        assert_eq!(watch.plan("a", due), WaitPlan::Wait);
        assert_eq!(watch.plan("a", due), WaitPlan::Skip);
        // The probe comes back short again: still missing, nothing new to report.
        assert_eq!(watch.record("a", false, due), Change::None);
        assert_eq!(watch.plan("a", due + EVERY / 2), WaitPlan::Skip);
        assert_eq!(watch.plan("a", due + EVERY), WaitPlan::Wait);
    }

    #[test]
    fn a_full_reply_brings_the_master_back_to_waiting_on_every_write() {
        let watch = ReplicaWatch::new(EVERY);
        let t0 = Instant::now();
        watch.record("a", false, t0);
        assert_eq!(watch.plan("a", t0 + EVERY), WaitPlan::Wait);
        assert_eq!(watch.record("a", true, t0 + EVERY), Change::Regained);
        assert!(!watch.any_missing());
        assert_eq!(watch.missing(), 0);
        assert_eq!(watch.plan("a", t0 + EVERY), WaitPlan::Wait);
        assert_eq!(watch.plan("a", t0 + EVERY), WaitPlan::Wait);
    }
}
