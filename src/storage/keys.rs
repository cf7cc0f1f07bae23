//! The key schema: every Redis key name botfleet uses, built from `[keys]` in the settings.
//!
//! The seed layouts are a public interface (bots in Python or TypeScript read and write these
//! keys), so the defaults reproduce them: `bot:tasks:queue`, `bot:task:ID`, `bot:state`, ...
//! With a hash-tagged prefix such as `{bot}` every key of the prefix lands in one cluster
//! slot, so the scripts that touch the queue and a task hash together run on Redis Cluster.
//! botfleet's own bookkeeping lives under `keys.internal_prefix` (`botfleet` by default).

use crate::settings::KeySettings;

/// Key names, from settings. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema {
    prefix: String,
    internal: String,
}

impl Default for KeySchema {
    fn default() -> Self {
        Self::new(&KeySettings::default())
    }
}

impl KeySchema {
    /// The schema for `[keys]`.
    pub fn new(settings: &KeySettings) -> Self {
        Self {
            prefix: settings.prefix.clone(),
            internal: settings.internal_prefix.clone(),
        }
    }

    /// The seed's prefix (`bot`, or `{bot}` on a cluster).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// botfleet's own prefix.
    pub fn internal_prefix(&self) -> &str {
        &self.internal
    }

    /// `PREFIX:tasks:queue`: sorted set of waiting task ids, score = -priority.
    pub fn task_queue(&self) -> String {
        format!("{}:tasks:queue", self.prefix)
    }

    /// `PREFIX:task:ID`: a task's hash.
    pub fn task(&self, id: &str) -> String {
        format!("{}:task:{id}", self.prefix)
    }

    /// `PREFIX:state`: the bot state hash.
    pub fn state(&self) -> String {
        format!("{}:state", self.prefix)
    }

    /// `PREFIX:sessions:active`: set of active session ids.
    pub fn sessions_active(&self) -> String {
        format!("{}:sessions:active", self.prefix)
    }

    /// `PREFIX:session:ID`: a session's hash.
    pub fn session(&self, id: &str) -> String {
        format!("{}:session:{id}", self.prefix)
    }

    /// `PREFIX:metrics:ID`: a session's metrics hash.
    pub fn metrics(&self, session_id: &str) -> String {
        format!("{}:metrics:{session_id}", self.prefix)
    }

    /// `PREFIX:events`: the capped event log.
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// `INTERNAL:instance:ID`: an instance's presence record.
    pub fn instance(&self, instance_id: &str) -> String {
        format!("{}:instance:{instance_id}", self.internal)
    }

    /// `INTERNAL:lock-fence:{TAG}`: the fencing counter on a Cluster (a decimal string: the
    /// highest token issued or reserved; a grant takes one more, never below the server's
    /// clock in microseconds) shared by the locks whose name hashes to TAG's cluster slot, so
    /// a lock and its counter are touched by one script while the lock key stays exactly the
    /// name given. One counter per slot, not one per name: tokens strictly increase for every
    /// name of the slot and the counters never grow with the number of names. Off a Cluster
    /// the lock manager uses [`KeySchema::lock_fence_shared`].
    pub fn lock_fence(&self, lock_name: &str) -> String {
        self.fence_in(lock_slot_tag(lock_name))
    }

    /// `INTERNAL:lock-waiting:{TAG}:NAME`: set (with a TTL) by a waiter whose attempt failed,
    /// deleted by the release script, which announces the release only when it was set; TAG
    /// puts it in the lock name's slot.
    pub fn lock_waiting(&self, lock_name: &str) -> String {
        self.waiting_in(lock_slot_tag(lock_name), lock_name)
    }

    /// [`KeySchema::lock_fence`] and [`KeySchema::lock_waiting`] of one lock, with its hash
    /// slot computed once: an acquisition needs both.
    pub fn lock_keys(&self, lock_name: &str) -> (String, String) {
        let tag = lock_slot_tag(lock_name);
        (self.fence_in(tag), self.waiting_in(tag, lock_name))
    }

    /// `INTERNAL:lock-fence`: the one fencing counter of every lock on a Redis that is not a
    /// Cluster (where one script may touch keys of any slot). The acquire script raises it
    /// once per call, however many locks the call grants, where a counter per slot would be
    /// raised once per grant: that is the lock manager's choice (see `Locks`), this is the
    /// key. Tokens strictly increase for every name, as with a counter per slot.
    pub fn lock_fence_shared(&self) -> String {
        concat(&[&self.internal, ":lock-fence"])
    }

    // Built with `push_str`, not `format!`: every acquisition makes both.
    fn fence_in(&self, tag: &str) -> String {
        concat(&[&self.internal, ":lock-fence:{", tag, "}"])
    }

    fn waiting_in(&self, tag: &str, lock_name: &str) -> String {
        concat(&[&self.internal, ":lock-waiting:{", tag, "}:", lock_name])
    }

    /// Glob matching every presence record.
    pub fn instances_pattern(&self) -> String {
        format!("{}:instance:*", self.internal)
    }
}

/// `parts` joined, in a string allocated once.
fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.push_str(part);
    }
    out
}

/// The tag that puts a lock's internal keys in the lock name's slot.
fn lock_slot_tag(lock_name: &str) -> &'static str {
    super::outbox::slot_tag(hash_slot(lock_name))
}

/// The cluster hash slot of a key (CRC16 of its hash tag, as Redis Cluster computes it).
pub fn hash_slot(key: &str) -> u16 {
    fred::util::redis_keyslot(key.as_bytes())
}

/// `items` grouped by the cluster slot of the key `key_of` gives each, in slot order (the
/// order within a group kept): one group per script call on a Cluster.
pub fn group_by_slot<T>(items: Vec<T>, key_of: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    let mut slots: std::collections::BTreeMap<u16, Vec<T>> = std::collections::BTreeMap::new();
    for item in items {
        slots
            .entry(hash_slot(key_of(&item)))
            .or_default()
            .push(item);
    }
    slots.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_reproduce_the_seed_layout() {
        let keys = KeySchema::new(&KeySettings::default());
        assert_eq!(keys.task_queue(), "bot:tasks:queue");
        assert_eq!(keys.task("42"), "bot:task:42");
        assert_eq!(keys.state(), "bot:state");
        assert_eq!(keys.sessions_active(), "bot:sessions:active");
        assert_eq!(keys.session("s1"), "bot:session:s1");
        assert_eq!(keys.metrics("s1"), "bot:metrics:s1");
        assert_eq!(keys.events(), "bot:events");
        assert_eq!(keys.instance("h-1"), "botfleet:instance:h-1");
    }

    #[test]
    fn a_hash_tagged_prefix_keeps_script_keys_in_one_slot() {
        let keys = KeySchema::new(&KeySettings {
            prefix: "{bot}".into(),
            ..KeySettings::default()
        });
        let slot = hash_slot(&keys.task_queue());
        for key in [keys.task("1"), keys.task("zz"), keys.state(), keys.events()] {
            assert_eq!(hash_slot(&key), slot, "{key}");
        }
        // Without the tag they spread over slots.
        let plain = KeySchema::new(&KeySettings::default());
        assert_ne!(hash_slot(&plain.task("1")), hash_slot(&plain.task_queue()));
        for name in [
            "bet-lock:user123-agent456",
            "wallet-retry-scheduler-lock",
            "{x}y",
        ] {
            assert_eq!(
                hash_slot(&plain.lock_fence(name)),
                hash_slot(name),
                "{name}"
            );
            assert_eq!(
                hash_slot(&plain.lock_waiting(name)),
                hash_slot(name),
                "{name}"
            );
            assert_eq!(
                plain.lock_keys(name),
                (plain.lock_fence(name), plain.lock_waiting(name)),
                "{name}"
            );
        }
    }
}
