//! Admin messages: `send(pid, message)` to any bot, and this process's inbox.
//!
//! Sending ([`Admin::send`]): the message is wrapped in an envelope
//! `{"id", "from", "message", "sent_at"}` (id = sender id + a counter, unique and increasing
//! per sender), appended to the list `admin:queue:PID` (whose TTL, `admin.queue_ttl_secs`, is
//! renewed) and then published on `admin:bot:PID`, in that order, so that a message that can
//! be heard live is always already in the queue.
//!
//! Receiving (the [`AdminInbox`] actor, reading for this process's pid, from a supervised
//! task): nothing is read until a consumer takes [`Admin::inbox`]. Until then, and after it is
//! dropped, `admin:queue:PID` is left alone for whoever owns it (in `botfleet run` nothing
//! takes it). With a consumer, the loop subscribes to `admin:bot:PID` first, then reads the
//! queue; it reads it again when the consumer arrives, every `admin.poll_interval_ms`, when
//! the storage returns to `redis` after an outage (`StorageModeChanged`, from the storage
//! monitor, in a fleet; the storage's own events for a loop started with [`Admin::serve`]:
//! messages sent meanwhile by other processes
//! were replayed into the queue by their own storage), and when a message is heard live that
//! it has not delivered yet (when that read cannot reach Redis, because the storage is not
//! back yet or the read fails, a message heard live that the read did not find waits in
//! Redis's queue for the read after the resync, so that it cannot overtake messages replayed
//! there after an outage). A read delivers the queue's entries in list order (the order in
//! which the senders' appends reached Redis: send order), skipping ids already delivered.
//! So every message reaches the host once and in order, whether it was heard live or found
//! in the queue, and a Redis restart that brings back delivered entries (persistence) or a
//! replay that appends one twice cannot duplicate it. The ids delivered are remembered in the
//! [`Admin`] handle for the queue's TTL plus a minute, at most 100,000 of them, so a
//! restarted actor does not deliver them again. A live message left for a later read is
//! counted in [`InboxStats::deferred_live`].
//!
//! Back-pressure: messages go to the host through a bounded channel (`admin.inbox_capacity`),
//! and the loop never waits on it. A read delivers while the channel has room and leaves the
//! rest queued (reading a window of the queue: the entries in the channel, the room left and
//! a margin); every 20 ms the loop removes from the queue, with one `admin-ack` script
//! (`LREM` per entry, idempotent when replayed after an outage), the entries the host has
//! received (the channel holds the newest of those put in it), and reads on when a read
//! stopped short and there is room again. So an entry leaves `admin:queue:PID` only once the
//! host received it; a slow host makes the queue longer, not the inbox stuck; nothing is
//! dropped, nothing delivered twice. Payloads that are not envelopes (a foreign sender) are
//! delivered without an id; duplicates of such a payload heard live and found in the queue
//! within a few seconds are delivered once; heard live, such a payload too is delivered after
//! a read of the queue, so that it cannot overtake a message whose live copy was missed. A
//! message only published (never queued) is delivered as heard while the channel has room.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use super::mailbox::{read_payload, Acked, Mailboxes, Received};
use super::{admin_channel, admin_queue, parse_pid, remove_from_queue_local, HeartbeatError};
use crate::actors::storage_monitor::StorageModeChanged;
use crate::clock::now_ms;
use crate::settings::AdminSettings;
use crate::storage::{
    Expiry, Keyspace, LocalError, Mode, Op, Reply, Script, Storage, StorageEvent,
};
use crate::supervisor::ChildContext;

/// Most ids remembered as delivered.
const SEEN_MAX: usize = 100_000;
/// How long a foreign payload delivered from one path is remembered against the other.
const PLAIN_WINDOW: Duration = Duration::from_secs(10);
/// Most foreign payloads remembered.
const PLAIN_MAX: usize = 256;
/// How often the inbox removes from the queue what the host received, and reads on after a
/// full channel.
const SETTLE_INTERVAL: Duration = Duration::from_millis(20);
/// Entries read past the room in the channel, so a read sees copies and the queue's end.
const READ_MARGIN: usize = 64;

/// KEYS: queue. ARGV: entries delivered. Removes one occurrence of each; answers how many.
const ACK: &str = r#"
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('LREM', KEYS[1], 1, ARGV[i])
end
return n
"#;

fn ack_local(
    ks: &mut Keyspace,
    now: u64,
    keys: &[String],
    args: &[String],
) -> Result<Reply, LocalError> {
    // One copy per entry (LREM count 1).
    remove_from_queue_local(ks, now, keys, args, "admin-ack", |rest, arg| {
        match rest.iter().position(|v| v == arg) {
            Some(i) => {
                rest.remove(i);
                true
            }
            None => false,
        }
    })
}

fn ack_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new("admin-ack", ACK, ack_local))
}

/// How a message reached the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Heard on `admin:bot:PID`.
    Live,
    /// Read from `admin:queue:PID`.
    Queue,
}

/// A message delivered to the host, typed whoever sent it: botfleet's envelope, or a seed
/// payload `{"message", "timestamp", ...}` (its `id` and `from` when it has them; its
/// timestamp in seconds, milliseconds or ISO-8601), or any other text as the message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminMessage {
    /// The sender's message id; `None` for a payload that carries none.
    pub id: Option<String>,
    /// The sender (`HOST-PID`), when known.
    pub from: Option<String>,
    /// The message.
    pub message: String,
    /// When it was sent, Unix milliseconds (the sender's clock), when known.
    pub sent_at_ms: Option<u64>,
    /// How it arrived.
    pub via: Delivery,
    /// The payload as sent.
    pub raw: String,
}

#[derive(Debug, Serialize)]
struct Envelope {
    id: String,
    from: String,
    message: String,
    sent_at: u64,
}

fn parse(raw: &str, via: Delivery) -> AdminMessage {
    let payload = read_payload(raw);
    AdminMessage {
        id: payload.id,
        from: payload.from,
        message: payload.message,
        sent_at_ms: payload.sent_at_ms,
        via,
        raw: raw.to_string(),
    }
}

/// Counters of the inbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct InboxStats {
    /// Messages delivered as heard live.
    pub delivered_live: u64,
    /// Messages delivered from the queue.
    pub delivered_queue: u64,
    /// Copies skipped because their id was already delivered.
    pub duplicates_skipped: u64,
    /// Reads of the queue.
    pub queue_reads: u64,
    /// Messages heard live while the queue could not be read from Redis (this process's
    /// storage not back yet, or the read failed): left queued and delivered, in order, by
    /// the next read.
    pub deferred_live: u64,
}

#[derive(Debug, Default)]
struct InboxState {
    seen: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
    plain: VecDeque<(String, Instant, Delivery)>,
    /// What went into the channel and was not removed from the queue yet, in channel order:
    /// the queue entry, or `None` for a message that was only heard live. The channel holds
    /// the newest of them; the older ones the consumer took, and they are removed.
    pending: VecDeque<Option<String>>,
    /// The last read stopped short of the end of the queue (the channel was full, or the
    /// read window ended): the next tick reads again.
    backlog: bool,
}

/// Why a read of the queue stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Every entry read was delivered or skipped, and the window held the whole queue.
    Done,
    /// The channel filled up, or the window ended: the rest waits in the queue.
    Backlog,
    /// Nobody consumes this inbox (not taken, or dropped): the queue is left alone.
    NoConsumer,
}

impl InboxState {
    /// Whether a foreign payload arriving by `via` is the copy of one delivered by the other
    /// path (without forgetting it).
    fn plain_is_copy(&self, payload: &str, via: Delivery) -> bool {
        let now = Instant::now();
        self.plain
            .iter()
            .any(|(p, at, v)| p == payload && *v != via && now.duration_since(*at) < PLAIN_WINDOW)
    }

    /// Marks `id` delivered; false when it already was.
    fn first_time(&mut self, id: &str, now: u64, keep_ms: u64) -> bool {
        if self.seen.contains_key(id) {
            return false;
        }
        self.seen.insert(id.to_string(), now);
        self.order.push_back((now, id.to_string()));
        while let Some((at, _)) = self.order.front() {
            if self.order.len() > SEEN_MAX || now.saturating_sub(*at) > keep_ms {
                if let Some((_, old)) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            } else {
                break;
            }
        }
        true
    }

    /// Whether a foreign payload arriving by `via` is the copy of one delivered by the other
    /// path; otherwise remembers it.
    fn plain_first_time(&mut self, payload: &str, via: Delivery) -> bool {
        let now = Instant::now();
        self.plain
            .retain(|(_, at, _)| now.duration_since(*at) < PLAIN_WINDOW);
        if let Some(i) = self
            .plain
            .iter()
            .position(|(p, _, v)| p == payload && *v != via)
        {
            self.plain.remove(i);
            return false;
        }
        if self.plain.len() >= PLAIN_MAX {
            self.plain.pop_front();
        }
        self.plain.push_back((payload.to_string(), now, via));
        true
    }
}

#[derive(Debug)]
struct Shared {
    storage: Storage,
    settings: AdminSettings,
    pid: u32,
    sender_id: String,
    seq: AtomicU64,
    tx: mpsc::Sender<AdminMessage>,
    rx: Mutex<Option<mpsc::Receiver<AdminMessage>>>,
    /// Set once the host took the inbox: before that, the queue is left alone.
    consumer: AtomicBool,
    /// Wakes the inbox loop to read the queue when the host takes the inbox.
    consumer_arrived: tokio::sync::Notify,
    /// Wakes the inbox loop to read the queue when the storage is back on Redis (the
    /// `AdminInbox` actor, told by the storage monitor).
    back_on_redis: tokio::sync::Notify,
    state: tokio::sync::Mutex<InboxState>,
    delivered_live: AtomicU64,
    delivered_queue: AtomicU64,
    duplicates: AtomicU64,
    reads: AtomicU64,
    deferred: AtomicU64,
    /// The queues of any pid read through this process (`receive`, `acknowledge`).
    mailboxes: Mailboxes,
}

/// Admin messaging: send to any bot, and this process's inbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    /// The admin handle of this process (`std::process::id()`) on `host`.
    pub fn new(storage: Storage, settings: AdminSettings, host: &str) -> Self {
        Self::for_pid(storage, settings, host, std::process::id())
    }

    /// An admin handle whose inbox reads the messages of `pid` (tests and simulations).
    pub fn for_pid(storage: Storage, settings: AdminSettings, host: &str, pid: u32) -> Self {
        let (tx, rx) = mpsc::channel(settings.inbox_capacity.max(1));
        let nonce: u32 = rand::random();
        Self {
            shared: Arc::new(Shared {
                settings,
                pid,
                sender_id: format!("{host}-{}-{nonce:08x}", std::process::id()),
                seq: AtomicU64::new(0),
                tx,
                rx: Mutex::new(Some(rx)),
                consumer: AtomicBool::new(false),
                consumer_arrived: tokio::sync::Notify::new(),
                back_on_redis: tokio::sync::Notify::new(),
                state: tokio::sync::Mutex::new(InboxState::default()),
                delivered_live: AtomicU64::new(0),
                delivered_queue: AtomicU64::new(0),
                duplicates: AtomicU64::new(0),
                reads: AtomicU64::new(0),
                deferred: AtomicU64::new(0),
                mailboxes: Mailboxes::new(storage.clone()),
                storage,
            }),
        }
    }

    /// The pid whose messages the inbox reads.
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// Sends `message` to the bot `pid` (decimal text, as the seed passes it): appended to
    /// `admin:queue:PID`, then published on `admin:bot:PID`. Answers the message id. A
    /// non-numeric pid or a message over `admin.max_message_bytes` is refused, nothing
    /// stored.
    pub async fn send(&self, pid: &str, message: &str) -> Result<String, HeartbeatError> {
        let pid = parse_pid(pid)?;
        let max = self.shared.settings.max_message_bytes;
        if message.len() > max {
            return Err(HeartbeatError::MessageTooLarge {
                bytes: message.len(),
                max,
            });
        }
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let envelope = Envelope {
            id: format!("{}-{seq:012}", self.shared.sender_id),
            from: self.shared.sender_id.clone(),
            message: message.to_string(),
            sent_at: now_ms(),
        };
        // Strings and integers always serialize.
        let text = serde_json::to_string(&envelope).unwrap_or_default();
        let queue = admin_queue(pid);
        let ttl_ms = self.shared.settings.queue_ttl_secs.saturating_mul(1_000);
        let replies = self
            .shared
            .storage
            .execute_batch(vec![
                Op::RPush {
                    key: queue.clone(),
                    values: vec![text.clone()],
                },
                Op::Expire {
                    key: queue,
                    expiry: Expiry::In(ttl_ms),
                },
            ])
            .await;
        for reply in replies {
            reply?;
        }
        self.shared
            .storage
            .publish(&admin_channel(pid), &text)
            .await?;
        self.shared.mailboxes.sent(pid);
        Ok(envelope.id)
    }

    /// The oldest `max` messages of bot `pid`'s queue, for a consumer outside this process (a
    /// bot in another language reading through the daemon), in queue order, each with an id;
    /// nothing is removed (see [`Admin::acknowledge`]). When the queue is empty, waits up to
    /// `wait` for a message. While the storage is off Redis it answers none, with
    /// [`Received::off_redis`] set. The queue of this process's own pid, while the host holds
    /// [`Admin::inbox`], is [`HeartbeatError::InboxTaken`]: it has a consumer already.
    pub async fn receive(
        &self,
        pid: u32,
        max: usize,
        wait: Duration,
    ) -> Result<Received, HeartbeatError> {
        self.check_foreign(pid)?;
        self.shared.mailboxes.receive(pid, max.max(1), wait).await
    }

    /// Removes the messages `ids` (as [`Admin::receive`] gave them) from bot `pid`'s queue,
    /// every copy of each; ids no longer there are skipped. Idempotent. During an outage the
    /// removal waits in the outbox and is applied when Redis returns.
    pub async fn acknowledge(&self, pid: u32, ids: &[String]) -> Result<Acked, HeartbeatError> {
        self.check_foreign(pid)?;
        self.shared.mailboxes.acknowledge(pid, ids).await
    }

    /// Refuses the queue of this process's own pid while the host consumes it.
    fn check_foreign(&self, pid: u32) -> Result<(), HeartbeatError> {
        if pid == self.shared.pid && self.has_consumer() {
            return Err(HeartbeatError::InboxTaken);
        }
        Ok(())
    }

    /// The messages waiting in a bot's queue, oldest first (the seed's
    /// `get_admin_messages`), without removing them.
    pub async fn queued(&self, pid: &str) -> Result<Vec<AdminMessage>, HeartbeatError> {
        let pid = parse_pid(pid)?;
        let entries = self.shared.storage.lrange(&admin_queue(pid), 0, -1).await?;
        Ok(entries
            .iter()
            .map(|raw| parse(raw, Delivery::Queue))
            .collect())
    }

    /// This process's inbox: every message sent to its pid, once, in send order. Taken once;
    /// a second call is [`HeartbeatError::InboxTaken`]. Until it is taken, and after it is
    /// dropped, messages wait in the queue, untouched (for whoever consumes them). At most
    /// `admin.inbox_capacity` wait in the channel; an entry leaves the queue once the host
    /// received it.
    pub fn inbox(&self) -> Result<mpsc::Receiver<AdminMessage>, HeartbeatError> {
        let rx = self
            .shared
            .rx
            .lock()
            .take()
            .ok_or(HeartbeatError::InboxTaken)?;
        self.shared.consumer.store(true, Ordering::Release);
        self.shared.consumer_arrived.notify_one();
        Ok(rx)
    }

    /// Whether a consumer holds the inbox now.
    fn has_consumer(&self) -> bool {
        self.shared.consumer.load(Ordering::Acquire) && !self.shared.tx.is_closed()
    }

    /// The inbox's counters.
    pub fn stats(&self) -> InboxStats {
        let s = &self.shared;
        InboxStats {
            delivered_live: s.delivered_live.load(Ordering::Relaxed),
            delivered_queue: s.delivered_queue.load(Ordering::Relaxed),
            duplicates_skipped: s.duplicates.load(Ordering::Relaxed),
            queue_reads: s.reads.load(Ordering::Relaxed),
            deferred_live: s.deferred.load(Ordering::Relaxed),
        }
    }

    fn keep_ms(&self) -> u64 {
        // Ids outlive the queue that could bring them back, with a margin.
        self.shared
            .settings
            .queue_ttl_secs
            .saturating_mul(1_000)
            .saturating_add(60_000)
    }

    /// Puts `message` into the channel if it has room; `entry` is its queue entry (`None`
    /// for one only heard live), removed from the queue once the host received it.
    fn deliver(
        &self,
        state: &mut InboxState,
        message: AdminMessage,
        entry: Option<String>,
    ) -> bool {
        let counter = match message.via {
            Delivery::Live => &self.shared.delivered_live,
            Delivery::Queue => &self.shared.delivered_queue,
        };
        // Only this loop sends, under the state lock: a permit taken here is not raced.
        match self.shared.tx.try_send(message) {
            Ok(()) => {
                counter.fetch_add(1, Ordering::Relaxed);
                state.pending.push_back(entry);
                true
            }
            Err(_) => false,
        }
    }

    /// Removes from the queue the entries the host has received: the channel holds the newest
    /// `max_capacity - capacity` of those pending, the older ones were taken.
    async fn settle(&self, state: &mut InboxState) -> Result<(), HeartbeatError> {
        let tx = &self.shared.tx;
        if tx.is_closed() {
            // Dropped unread: those entries stay queued.
            state.pending.clear();
            return Ok(());
        }
        let in_channel = tx.max_capacity() - tx.capacity();
        let taken = state.pending.len().saturating_sub(in_channel);
        if taken == 0 {
            return Ok(());
        }
        let done: Vec<Option<String>> = state.pending.drain(..taken).collect();
        let entries: Vec<&str> = done.iter().flatten().map(String::as_str).collect();
        if entries.is_empty() {
            return Ok(());
        }
        let queue = admin_queue(self.shared.pid);
        if let Err(e) = self
            .shared
            .storage
            .eval(ack_script(), &[&queue], &entries)
            .await
        {
            // Taken, not removed yet: the next settle tries again (removal is idempotent).
            for entry in done.into_iter().rev() {
                state.pending.push_front(entry);
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Reads the queue: delivers the entries not delivered yet, in list order, while the
    /// channel has room, after removing those the host received. `live` is the id heard live
    /// that triggered the read, reported as live. Reads at most the entries pending, the
    /// room in the channel and a margin, so a long queue is read in windows.
    async fn drain(
        &self,
        state: &mut InboxState,
        live: Option<&str>,
    ) -> Result<Read, HeartbeatError> {
        if !self.has_consumer() {
            state.pending.clear();
            return Ok(Read::NoConsumer);
        }
        self.settle(state).await?;
        let free = self.shared.tx.capacity();
        if free == 0 {
            state.backlog = true;
            return Ok(Read::Backlog);
        }
        let storage = &self.shared.storage;
        let queue = admin_queue(self.shared.pid);
        let window = state.pending.len() + free + READ_MARGIN;
        let entries = storage.lrange(&queue, 0, window as i64 - 1).await?;
        self.shared.reads.fetch_add(1, Ordering::Relaxed);
        let mut read = if entries.len() >= window {
            Read::Backlog
        } else {
            Read::Done
        };
        let keep = self.keep_ms();
        let mut copies = Vec::new();
        // Entries delivered from an earlier read and not removed yet are still at the head.
        // A payload without an id is recognised by its bytes only, and the live path may have
        // used up the note that it was delivered: count them out here.
        let mut undelivered_copies: HashMap<String, usize> = HashMap::new();
        for raw in state.pending.iter().flatten() {
            *undelivered_copies.entry(raw.clone()).or_default() += 1;
        }
        for raw in &entries {
            let mut message = parse(raw, Delivery::Queue);
            if message.id.is_none() {
                if let Some(left) = undelivered_copies.get_mut(raw.as_str()).filter(|n| **n > 0) {
                    *left -= 1;
                    continue;
                }
            }
            let fresh = match &message.id {
                Some(id) => !state.seen.contains_key(id),
                None => !state.plain_is_copy(raw, Delivery::Queue),
            };
            if !fresh {
                self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                if message.id.is_none() {
                    state.plain_first_time(raw, Delivery::Queue);
                }
                // A copy of a message still in the channel is removed once that is taken.
                if !state
                    .pending
                    .iter()
                    .any(|p| p.as_deref() == Some(raw.as_str()))
                {
                    copies.push(raw.as_str());
                }
                continue;
            }
            if !self.has_consumer() {
                read = Read::NoConsumer;
                break;
            }
            if self.shared.tx.capacity() == 0 {
                read = Read::Backlog;
                break;
            }
            match &message.id {
                Some(id) => {
                    state.first_time(id, now_ms(), keep);
                }
                None => {
                    state.plain_first_time(raw, Delivery::Queue);
                }
            }
            if message.id.is_some() && message.id.as_deref() == live {
                message.via = Delivery::Live;
            }
            if !self.deliver(state, message, Some(raw.clone())) {
                read = Read::NoConsumer;
                break;
            }
        }
        state.backlog = read == Read::Backlog;
        if !copies.is_empty() {
            storage.eval(ack_script(), &[&queue], &copies).await?;
        }
        Ok(read)
    }

    /// Handles a message heard live. Without a consumer it is left in the queue.
    async fn heard(&self, raw: &str) {
        let mut state = self.shared.state.lock().await;
        if !self.has_consumer() {
            return;
        }
        let message = parse(raw, Delivery::Live);
        let id = message.id.clone();
        match id.as_deref() {
            Some(id) if state.seen.contains_key(id) => {
                self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Some(id) => {
                // Earlier messages may still wait in the queue (replayed after an outage):
                // the queue holds this one too, behind them, so the queue is read first.
                let before = self.shared.storage.mode();
                let read = match self.drain(&mut state, Some(id)).await {
                    Ok(read) => read,
                    Err(e) => {
                        tracing::warn!(actor = "admin-inbox", error = %e, "admin queue read failed; the message stays queued");
                        self.shared.deferred.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                if state.seen.contains_key(id) {
                    // Found in the queue and delivered in its place.
                    return;
                }
                if read != Read::Done {
                    // The channel is full (or the window did not reach it): it waits in the
                    // queue, behind the messages before it.
                    self.shared.deferred.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // Not found. Off Redis (degraded or resyncing, before or during the read) the
                // queue just read is the fallback's: a message sent by this process during
                // the outage is there, but one heard from Redis (the subscription can come
                // back before the storage does) waits in Redis's queue, behind what was
                // replayed there. It stays queued for the read after the resync.
                let after = self.shared.storage.mode();
                let off_redis = |m: Mode| matches!(m, Mode::Degraded | Mode::Resyncing);
                if off_redis(before) || off_redis(after) {
                    self.shared.deferred.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // A sender that published without queueing: delivered as heard, when the
                // channel has room (such a message has no queue entry to wait in).
                if self.shared.tx.capacity() > 0 {
                    state.first_time(id, now_ms(), self.keep_ms());
                    self.deliver(&mut state, message, None);
                } else {
                    self.shared.deferred.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                // As for an id: messages before it may wait in the queue (their live copy
                // missed), so the queue is read first and this one cannot overtake them. A
                // seed sender publishes before it pushes, so the read seldom holds this one
                // yet; when it does, it is delivered from there and this copy skipped.
                let read = match self.drain(&mut state, None).await {
                    Ok(read) => read,
                    Err(e) => {
                        // Nothing could be read before it: delivered as heard.
                        tracing::warn!(actor = "admin-inbox", error = %e, "admin queue read failed; the message is delivered as heard");
                        Read::Done
                    }
                };
                if state.plain_is_copy(raw, Delivery::Live) {
                    state.plain_first_time(raw, Delivery::Live);
                    self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                } else if read == Read::Done && self.shared.tx.capacity() > 0 {
                    state.plain_first_time(raw, Delivery::Live);
                    self.deliver(&mut state, message, None);
                }
                // Else the channel is full, or the read stopped short: a seed sender queued
                // it too, read later behind the messages before it.
            }
        }
    }

    /// Reads the queue now (what the inbox does on start, on its poll and after a resync).
    /// Does nothing while no consumer holds the inbox.
    pub async fn read_queue(&self) -> Result<(), HeartbeatError> {
        let mut state = self.shared.state.lock().await;
        self.drain(&mut state, None).await.map(|_| ())
    }

    /// Every `SETTLE_INTERVAL`: removes what the host received and, when a read stopped
    /// short and the channel has room again, reads on.
    async fn settle_tick(&self) -> Result<(), HeartbeatError> {
        let mut state = self.shared.state.lock().await;
        if state.pending.is_empty() && !state.backlog {
            return Ok(());
        }
        if state.backlog && self.shared.tx.capacity() > 0 {
            self.drain(&mut state, None).await.map(|_| ())
        } else {
            self.settle(&mut state).await
        }
    }

    /// The inbox loop: subscribe, read the queue, then serve live messages, polls and
    /// resyncs until the storage closes (then it returns). The `AdminInbox` actor runs it as
    /// a supervised task; a host without the actor system may spawn it on its own runtime
    /// instead (one loop per handle). It never waits on the consumer: a full channel leaves
    /// the rest queued for a later read.
    pub async fn serve(self) {
        self.run(true).await;
    }

    /// The loop; `own_events`: follow the storage's events itself (else the `AdminInbox`
    /// actor is told of mode changes by the storage monitor and wakes it).
    async fn run(self, own_events: bool) {
        let storage = self.shared.storage.clone();
        let mut live = storage.subscribe(&admin_channel(self.shared.pid)).await;
        let mut events = own_events.then(|| storage.events());
        let every = Duration::from_millis(self.shared.settings.poll_interval_ms.max(1));
        let mut poll = tokio::time::interval(every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut settle = tokio::time::interval(SETTLE_INTERVAL);
        settle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = live.recv() => match message {
                    Some(raw) => self.heard(&raw).await,
                    None => break,
                },
                event = next_event(&mut events) => match event {
                    Ok(StorageEvent::ModeChanged { to: Mode::Redis, .. })
                    | Err(broadcast::error::RecvError::Lagged(_)) => self.poll_queue().await,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = self.shared.back_on_redis.notified() => self.poll_queue().await,
                _ = poll.tick() => self.poll_queue().await,
                _ = self.shared.consumer_arrived.notified() => self.poll_queue().await,
                _ = settle.tick() => {
                    if let Err(e) = self.settle_tick().await {
                        tracing::warn!(actor = "admin-inbox", error = %e, "removing delivered admin messages failed; retried");
                    }
                }
            }
        }
    }

    async fn poll_queue(&self) {
        if let Err(e) = self.read_queue().await {
            tracing::warn!(actor = "admin-inbox", error = %e, "admin queue read failed");
        }
    }
}

/// The next storage event, when the loop follows them itself; never otherwise.
async fn next_event(
    events: &mut Option<broadcast::Receiver<StorageEvent>>,
) -> Result<StorageEvent, broadcast::error::RecvError> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The actor that runs this process's inbox loop as a supervised task on the host runtime
/// (the loop's end or panic fails the actor; a restart subscribes and reads the queue again,
/// and the ids delivered, kept in the handle, are not delivered twice).
#[derive(Debug)]
pub(crate) struct AdminInbox {
    admin: Admin,
    runtime: tokio::runtime::Handle,
    child: ChildContext,
}

impl AdminInbox {
    /// An inbox actor for `admin`'s pid, running its loop on `runtime`, for the incarnation
    /// `child`.
    pub fn new(admin: Admin, runtime: tokio::runtime::Handle, child: ChildContext) -> Self {
        Self {
            admin,
            runtime,
            child,
        }
    }
}

impl Actor for AdminInbox {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let admin = self.admin.clone();
        self.child
            .spawn_task(ctx, "inbox", &self.runtime, admin.run(false));
    }
}

impl Handler<StorageModeChanged> for AdminInbox {
    type Result = ();

    /// Back on Redis: messages sent meanwhile by other processes were replayed into the queue
    /// by their own storage; the loop reads it again.
    fn handle(&mut self, changed: StorageModeChanged, _: &mut Context<Self>) {
        if changed.to == Mode::Redis {
            self.admin.shared.back_on_redis.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_delivered_once_and_forgotten_after_their_time() {
        let mut state = InboxState::default();
        assert!(state.first_time("a", 1_000, 10_000));
        assert!(!state.first_time("a", 2_000, 10_000));
        assert!(state.first_time("b", 20_000, 10_000));
        assert!(state.first_time("a", 20_001, 10_000), "a was forgotten");
    }

    #[test]
    fn a_foreign_payload_heard_and_queued_is_delivered_once() {
        let mut state = InboxState::default();
        assert!(state.plain_first_time("hello", Delivery::Live));
        assert!(!state.plain_first_time("hello", Delivery::Queue));
        assert!(
            state.plain_first_time("hello", Delivery::Queue),
            "a second send"
        );
    }

    #[test]
    fn envelopes_and_plain_payloads_parse() {
        let m = parse(
            r#"{"id":"s-1","from":"s","message":"hi","sent_at":5}"#,
            Delivery::Queue,
        );
        assert_eq!(m.id.as_deref(), Some("s-1"));
        assert_eq!(m.message, "hi");
        let p = parse("Hello bot!", Delivery::Live);
        assert_eq!(p.id, None);
        assert_eq!(p.message, "Hello bot!");
    }

    #[test]
    fn the_local_ack_removes_one_copy_per_entry_and_keeps_the_expiry() {
        let mut ks = Keyspace::new();
        let key = "admin:queue:1".to_string();
        ks.apply(
            &Op::RPush {
                key: key.clone(),
                values: vec!["a".into(), "b".into(), "a".into(), "c".into()],
            },
            0,
        )
        .unwrap();
        ks.apply(
            &Op::Expire {
                key: key.clone(),
                expiry: Expiry::At(10_000),
            },
            0,
        )
        .unwrap();
        let n = ack_local(
            &mut ks,
            100,
            std::slice::from_ref(&key),
            &["a".into(), "c".into()],
        )
        .unwrap();
        assert_eq!(n, Reply::Int(2));
        let rest = ks
            .apply(
                &Op::LRange {
                    key: key.clone(),
                    start: 0,
                    stop: -1,
                },
                100,
            )
            .unwrap()
            .into_strings();
        assert_eq!(rest, vec!["b".to_string(), "a".to_string()]);
        assert_eq!(ks.apply(&Op::Pttl { key }, 100).unwrap(), Reply::Int(9_900));
    }
}
