//! The key watch: every process with shared data enabled follows `shared_data.shared_key`
//! itself, so that a snapshot written by anyone in the seed's layout (a seed "English bot"
//! writes it with a plain `SET` + `EXPIRE`, and sends no notice) reaches every reader of the
//! process and wakes [`Reader::newer_than`](super::Reader::newer_than).
//!
//! How it follows the key:
//!
//! - **Checks**: a `GET` of the key every `shared_data.watch_interval_ms`; the text is parsed
//!   only when it changed. A snapshot newer than the one the process knows is offered to
//!   every reader. Bound: a write reaches the readers within one interval plus one round trip.
//! - **Keyspace notifications** (`shared_data.keyspace_events`): with `auto`, when the
//!   server already emits them for strings (`CONFIG GET notify-keyspace-events` holds `K` and
//!   `$` or `A`), the watch subscribes to `__keyspace@DB__:KEY` and reads the key on each
//!   event: a write reaches the readers within about one round trip. `enable` adds `K$` to
//!   the server's flags first; `off` never looks. The checks go on as a safety net (events
//!   are lost while the subscriber reconnects), every four intervals. The flags are read
//!   again every [`CONFIG_RECHECK`] (a restarted server may have other ones); a server that
//!   refuses `CONFIG`, and a Cluster (whose nodes announce only their own keys), are checked
//!   only.
//!
//! The watch is a second supervised task of the fetcher actor: its panic fails the actor,
//! which its supervisor restarts. Its counters live in the handle.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Core, Snapshot};
use crate::clock::now_ms;
use crate::settings::KeyspaceEvents;
use crate::storage::{Mode, StorageError, Subscription};
use crate::supervisor::fault;

/// How often the server's `notify-keyspace-events` flags are read again.
pub(crate) const CONFIG_RECHECK: Duration = Duration::from_secs(30);
/// The checks run this many times less often while keyspace notifications are in use.
const SAFETY_NET_FACTOR: u64 = 4;

/// How the watch follows the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// Not at all (`watch_interval_ms = 0`, or shared data disabled).
    Off,
    /// A `GET` every `watch_interval_ms`.
    Checks,
    /// Keyspace notifications, and a `GET` every four intervals.
    Keyspace,
}

impl WatchMode {
    fn as_u8(self) -> u8 {
        match self {
            WatchMode::Off => 0,
            WatchMode::Checks => 1,
            WatchMode::Keyspace => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => WatchMode::Checks,
            2 => WatchMode::Keyspace,
            _ => WatchMode::Off,
        }
    }
}

/// The watch's counters (in the handle: they survive a restart of the actor).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    mode: AtomicU8,
    reads: AtomicU64,
    events: AtomicU64,
    found: AtomicU64,
    errors: AtomicU64,
    last_found_ms: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self, interval_ms: u64) -> WatchMetrics {
        let last = self.last_found_ms.load(Ordering::Relaxed);
        let mode = WatchMode::from_u8(self.mode.load(Ordering::Relaxed));
        WatchMetrics {
            mode,
            interval_ms,
            bound_ms: match mode {
                WatchMode::Off => None,
                // Events bring a write within a round trip; the bound shown is the safety
                // net's, should an event be lost.
                WatchMode::Keyspace => Some(interval_ms.saturating_mul(SAFETY_NET_FACTOR)),
                WatchMode::Checks => Some(interval_ms),
            },
            reads: self.reads.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            snapshots_found: self.found.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_found_ms: (last > 0).then_some(last),
        }
    }
}

/// The key watch's counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchMetrics {
    /// How the key is followed now.
    pub mode: WatchMode,
    /// `shared_data.watch_interval_ms`.
    pub interval_ms: u64,
    /// Longest time a write waits for the next check, milliseconds (`None`: not followed).
    pub bound_ms: Option<u64>,
    /// Reads of the key.
    pub reads: u64,
    /// Keyspace events received.
    pub events: u64,
    /// Snapshots newer than the process knew, found in the key and handed to the readers.
    pub snapshots_found: u64,
    /// Reads that failed (other than outages, which the fallback serves).
    pub errors: u64,
    /// When the last one was found, Unix milliseconds.
    pub last_found_ms: Option<u64>,
}

/// The watch loop; it never returns (with the watch off, it waits forever).
pub(crate) async fn run(core: Arc<Core>) {
    let settings = &core.settings;
    let counters = &core.watch;
    if settings.watch_interval_ms == 0 {
        counters
            .mode
            .store(WatchMode::Off.as_u8(), Ordering::Relaxed);
        return std::future::pending().await;
    }
    let interval = Duration::from_millis(settings.watch_interval_ms);
    let channel = match settings.keyspace_events {
        KeyspaceEvents::Off => None,
        _ => core.storage.keyspace_channel(&settings.shared_key),
    };
    let mut events: Option<Subscription> = None;
    let mut notified = false;
    let mut recheck = tokio::time::Instant::now();
    let mut last_text: Option<String> = None;
    loop {
        fault::point("shared-data-watch");
        if let Some(channel) = &channel {
            if tokio::time::Instant::now() >= recheck && core.storage.mode() == Mode::Redis {
                notified = keyspace_events_on(&core).await;
                recheck = tokio::time::Instant::now() + CONFIG_RECHECK;
                if notified && events.is_none() {
                    events = Some(core.storage.subscribe(channel).await);
                    // A write between the flags' check and the subscription is found by the
                    // read below.
                }
            }
        }
        let mode = if notified {
            WatchMode::Keyspace
        } else {
            WatchMode::Checks
        };
        counters.mode.store(mode.as_u8(), Ordering::Relaxed);
        check(&core, &mut last_text).await;
        let pause = if notified {
            interval * SAFETY_NET_FACTOR as u32
        } else {
            interval
        };
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                event = next_event(&mut events) => match event {
                    Some(_) if notified => {
                        counters.events.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    // Events after the server stopped emitting them would not come; those
                    // that do are only a hint.
                    Some(_) => {}
                    None => events = None,
                },
            }
        }
    }
}

/// The next keyspace event, when subscribed; never otherwise.
async fn next_event(events: &mut Option<Subscription>) -> Option<String> {
    match events {
        Some(subscription) => subscription.recv().await,
        None => std::future::pending().await,
    }
}

/// Whether the server announces string writes of the key (enabling it when the settings say
/// so).
async fn keyspace_events_on(core: &Core) -> bool {
    let storage = &core.storage;
    let flags = match storage.server_config("notify-keyspace-events").await {
        Ok(flags) => flags.unwrap_or_default(),
        Err(e) => {
            tracing::debug!(actor = "fetcher", key = %core.settings.shared_key, error = %e,
                "keyspace notifications not available; checking the key instead");
            return false;
        }
    };
    if covers_strings(&flags) {
        return true;
    }
    if core.settings.keyspace_events != KeyspaceEvents::Enable {
        return false;
    }
    let wanted = with_string_events(&flags);
    match storage
        .set_server_config("notify-keyspace-events", &wanted)
        .await
    {
        Ok(()) => {
            tracing::info!(actor = "fetcher", key = %core.settings.shared_key, flags = %wanted,
                "enabled keyspace notifications on the server (shared_data.keyspace_events = \"enable\")");
            true
        }
        Err(e) => {
            tracing::warn!(actor = "fetcher", key = %core.settings.shared_key, error = %e,
                "could not enable keyspace notifications; checking the key instead");
            false
        }
    }
}

/// Whether `notify-keyspace-events` flags announce string commands on the keyspace channel.
pub(crate) fn covers_strings(flags: &str) -> bool {
    flags.contains('K') && (flags.contains('$') || flags.contains('A'))
}

/// `flags` with `K` and `$` added.
pub(crate) fn with_string_events(flags: &str) -> String {
    let mut out = flags.to_string();
    for flag in ['K', '$'] {
        if !out.contains(flag) {
            out.push(flag);
        }
    }
    out
}

/// One read of the key: a snapshot newer than the process knows goes to every reader.
async fn check(core: &Core, last_text: &mut Option<String>) {
    let counters = &core.watch;
    counters.reads.fetch_add(1, Ordering::Relaxed);
    let text = match core.storage.get(&core.settings.shared_key).await {
        Ok(Some(text)) => text,
        Ok(None) => return,
        Err(StorageError::Unavailable(_)) => return,
        Err(e) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(actor = "fetcher", key = %core.settings.shared_key, error = %e, "shared key not read");
            return;
        }
    };
    if last_text.as_deref() == Some(text.as_str()) {
        return;
    }
    let parsed = serde_json::from_str::<Snapshot>(&text);
    *last_text = Some(text);
    let snapshot = match parsed {
        Ok(snapshot) => Arc::new(snapshot),
        Err(e) => {
            tracing::debug!(actor = "fetcher", key = %core.settings.shared_key, error = %e, "shared key not in the seed's layout");
            return;
        }
    };
    if core.offer_to_readers(&snapshot) {
        counters.found.fetch_add(1, Ordering::Relaxed);
        counters.last_found_ms.store(now_ms(), Ordering::Relaxed);
        tracing::debug!(actor = "fetcher", key = %core.settings.shared_key, age_ms = snapshot.age_ms(now_ms()),
            "shared data read from the key (updated {}ms ago)", snapshot.age_ms(now_ms()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_events_need_the_keyspace_class_and_strings() {
        assert!(covers_strings("K$"));
        assert!(covers_strings("AKE"));
        assert!(covers_strings("$gK"));
        assert!(!covers_strings(""));
        assert!(!covers_strings("E$"), "keyevent only");
        assert!(!covers_strings("Kg"), "generic commands only");
    }

    #[test]
    fn enabling_adds_what_is_missing_and_keeps_the_rest() {
        assert_eq!(with_string_events(""), "K$");
        assert_eq!(with_string_events("Ex"), "ExK$");
        assert_eq!(with_string_events("KEA"), "KEA$");
        assert!(covers_strings(&with_string_events("g")));
    }
}
