//! Admin queues read from outside this process: a bot in any language, using the daemon as a
//! sidecar, reads the messages sent to its pid (`admin:queue:PID`) through the daemon and
//! acknowledges them ([`Admin::receive`](super::Admin::receive),
//! [`Admin::acknowledge`](super::Admin::acknowledge); `GET /api/admin/inbox/{pid}` and
//! `POST /api/admin/inbox/{pid}/ack`). Also how every payload of a queue is read, whoever
//! wrote it ([`read_payload`]).
//!
//! Delivery is at least once, in queue order: a read answers the oldest entries of the queue
//! and removes nothing; an entry leaves the queue only once its id is acknowledged (one
//! `admin-ack-all` script: `LREM` of each acknowledged entry, every copy of it, idempotent
//! when replayed after an outage). A consumer that dies before its acknowledgement reads the
//! same messages again; ids are the idempotence key. A read that finds the queue empty waits
//! up to the given time: woken by the message's notice on `admin:bot:PID` (one subscription
//! per pid followed, up to [`MAX_FOLLOWED`]), by a send of this process, and otherwise by a
//! check every [`RECHECK`] (a seed sender publishes before it pushes; a bare `RPUSH`
//! announces nothing).
//!
//! Ids: a botfleet envelope's `id`; the `id` a seed payload carries; otherwise a content id,
//! `sha256:` and 32 hex digits of the raw entry, so byte-identical entries are one message
//! (acknowledging it removes every copy).
//!
//! Outages: while this process's storage is not on Redis (`degraded`, `resyncing`), a read
//! answers no message and says so (`off_redis`): the fallback holds only what this process
//! sent meanwhile, which Redis's queue will hold behind older entries once the outbox is
//! replayed, so serving it now would break the order. An acknowledgement during an outage is
//! applied to the fallback and replayed on Redis when it returns; it finds the entries by the
//! text this process handed out (remembered for the last [`HANDED_OUT_MAX`] messages), since
//! the queue itself cannot be read then. Without Redis (`fallback` mode) the fallback is the
//! store and is served.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::{admin_channel, admin_queue, remove_from_queue_local, HeartbeatError};
use crate::clock::parse_ms_lenient;
use crate::storage::{Keyspace, LocalError, Mode, Reply, Script, Storage};

/// Pids whose channel is followed for the waiting reads; past it, reads wait on the checks.
pub const MAX_FOLLOWED: usize = 1_024;
/// How often a waiting read looks at the queue when no notice woke it.
pub const RECHECK: Duration = Duration::from_millis(100);
/// After a notice that found the queue still empty (the sender publishes first), the next look.
const AFTER_NOTICE: Duration = Duration::from_millis(5);
/// Entries read to find acknowledged ids this process did not hand out itself.
const ACK_WINDOW: i64 = 1_000;
/// Messages whose entry text is remembered, for acknowledgements during an outage.
pub const HANDED_OUT_MAX: usize = 100_000;
/// Longest id taken from a payload; a longer one is replaced by the content id.
const ID_MAX: usize = 256;
/// A number below this is a `timestamp` in seconds (`time.time()`); above, milliseconds.
const SECONDS_BELOW: f64 = 100_000_000_000.0;

/// KEYS: queue. ARGV: entries acknowledged. Removes every copy of each; answers how many
/// arguments removed at least one.
const ACK_ALL: &str = r#"
local n = 0
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], 0, ARGV[i]) > 0 then
    n = n + 1
  end
end
return n
"#;

fn ack_all_local(
    ks: &mut Keyspace,
    now: u64,
    keys: &[String],
    args: &[String],
) -> Result<Reply, LocalError> {
    // Every copy of each entry (LREM count 0).
    remove_from_queue_local(ks, now, keys, args, "admin-ack-all", |rest, arg| {
        let len = rest.len();
        rest.retain(|v| v != arg);
        rest.len() < len
    })
}

/// The `admin-ack-all` script (Lua, and its twin for the fallback and the replay).
pub fn ack_all_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new("admin-ack-all", ACK_ALL, ack_all_local))
}

/// Who wrote a queue entry, as far as its text tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// botfleet's envelope `{"id", "from", "message", "sent_at"}`.
    Envelope,
    /// A JSON object with a `message` (seed 004's Python: `{"message", "timestamp", ...}`).
    Seed,
    /// Anything else: the text is the message.
    Text,
}

/// What a queue entry (or a live payload) says, whoever wrote it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Payload {
    /// The id the payload carries, if any.
    pub(crate) id: Option<String>,
    /// The sender, when the payload names it.
    pub(crate) from: Option<String>,
    /// The message.
    pub(crate) message: String,
    /// When it was sent, Unix milliseconds, when the payload says.
    pub(crate) sent_at_ms: Option<u64>,
    /// Who wrote it.
    pub(crate) kind: PayloadKind,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    id: String,
    from: String,
    message: String,
    sent_at: u64,
}

/// Reads a payload: botfleet's envelope; a seed object with a `message` (its `id` and
/// `from` when it has them, its `sent_at` in ms or its `timestamp` in seconds, milliseconds or
/// ISO-8601, a time without an offset taken as UTC); anything else is the message itself.
pub(crate) fn read_payload(raw: &str) -> Payload {
    if let Ok(e) = serde_json::from_str::<Envelope>(raw) {
        return Payload {
            id: Some(e.id),
            from: Some(e.from),
            message: e.message,
            sent_at_ms: Some(e.sent_at),
            kind: PayloadKind::Envelope,
        };
    }
    let object = serde_json::from_str::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| match v {
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        });
    let Some(object) = object.filter(|o| o.contains_key("message")) else {
        return Payload {
            id: None,
            from: None,
            message: raw.to_string(),
            sent_at_ms: None,
            kind: PayloadKind::Text,
        };
    };
    let text = |field: &str| {
        object
            .get(field)
            .and_then(|v| v.as_str())
            .filter(|s| !s.trim().is_empty() && s.len() <= ID_MAX)
            .map(str::to_string)
    };
    let message = match &object["message"] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let sent_at_ms = object
        .get("sent_at")
        .and_then(|v| v.as_u64())
        .or_else(|| object.get("timestamp").and_then(timestamp_ms));
    Payload {
        id: text("id"),
        from: text("from"),
        message,
        sent_at_ms,
        kind: PayloadKind::Seed,
    }
}

/// A seed's `timestamp`: seconds (`time.time()`) or milliseconds as a number or numeric
/// text, or an ISO-8601 time.
fn timestamp_ms(value: &serde_json::Value) -> Option<u64> {
    let number = match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => match s.trim().parse::<f64>() {
            Ok(n) => Some(n),
            Err(_) => return parse_ms_lenient(s).and_then(|ms| u64::try_from(ms).ok()),
        },
        _ => None,
    }?;
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    let ms = if number < SECONDS_BELOW {
        number * 1_000.0
    } else {
        number
    };
    Some(ms.round() as u64)
}

/// The content id of an entry: `sha256:` and the first 32 hex digits of its digest.
pub(crate) fn content_id(raw: &str) -> String {
    let digest = Sha256::digest(raw.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// One message of a bot's queue, as a consumer outside the process receives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueuedMessage {
    /// Its id: the envelope's, the seed payload's, or the content id.
    pub id: String,
    /// The sender, when known.
    pub from: Option<String>,
    /// The message.
    pub message: String,
    /// When it was sent, Unix milliseconds (the sender's clock), when known.
    #[serde(rename = "sent_at")]
    pub sent_at_ms: Option<u64>,
    /// Who wrote it.
    pub kind: PayloadKind,
    /// The queue entry as stored.
    pub raw: String,
}

impl QueuedMessage {
    /// The message of queue entry `raw`.
    pub fn of(raw: String) -> Self {
        let payload = read_payload(&raw);
        QueuedMessage {
            id: payload.id.unwrap_or_else(|| content_id(&raw)),
            from: payload.from,
            message: payload.message,
            sent_at_ms: payload.sent_at_ms,
            kind: payload.kind,
            raw,
        }
    }
}

/// What [`Admin::receive`](super::Admin::receive) answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Received {
    /// The oldest messages of the queue, in queue order (none repeated).
    pub messages: Vec<QueuedMessage>,
    /// The storage was not on Redis: Redis's queue could not be read, messages may wait there.
    pub off_redis: bool,
}

/// What [`Admin::acknowledge`](super::Admin::acknowledge) answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Acked {
    /// Ids whose entries were removed (on Redis), or will be when the outbox is replayed
    /// (during an outage).
    pub acked: u64,
    /// The storage was not on Redis: the removal waits in the outbox.
    pub off_redis: bool,
}

/// Entry texts handed out, by (pid, id), oldest first out.
#[derive(Debug, Default)]
struct HandedOut {
    /// (pid, id) -> (generation, text).
    texts: HashMap<(u32, String), (u64, String)>,
    /// (generation, pid, id), oldest first; an entry whose generation no longer matches was
    /// forgotten (and perhaps remembered again since).
    order: VecDeque<(u64, (u32, String))>,
    generation: u64,
}

impl HandedOut {
    fn remember(&mut self, pid: u32, id: &str, raw: &str) {
        let key = (pid, id.to_string());
        if self.texts.contains_key(&key) {
            return;
        }
        self.generation += 1;
        self.texts
            .insert(key.clone(), (self.generation, raw.to_string()));
        self.order.push_back((self.generation, key));
        while self.order.len() > HANDED_OUT_MAX {
            if let Some((generation, old)) = self.order.pop_front() {
                if self.texts.get(&old).is_some_and(|(g, _)| *g == generation) {
                    self.texts.remove(&old);
                }
            }
        }
    }

    fn get(&self, pid: u32, id: &str) -> Option<String> {
        self.texts
            .get(&(pid, id.to_string()))
            .map(|(_, raw)| raw.clone())
    }

    fn forget(&mut self, pid: u32, id: &str) {
        // Its place in the order goes when it reaches the front.
        self.texts.remove(&(pid, id.to_string()));
    }
}

/// The queues read through this process: the channels followed for waiting reads and the
/// entries handed out. Lives in the `Admin` handle.
#[derive(Debug)]
pub(crate) struct Mailboxes {
    storage: Storage,
    runtime: Option<tokio::runtime::Handle>,
    // Both mutexes are held for a map operation, never across an await.
    followed: Mutex<HashMap<u32, Arc<Notify>>>,
    handed_out: Mutex<HandedOut>,
}

fn off_redis(mode: Mode) -> bool {
    matches!(mode, Mode::Degraded | Mode::Resyncing)
}

impl Mailboxes {
    /// Queues on `storage`; channel followers run on the current runtime (the host's).
    pub(crate) fn new(storage: Storage) -> Self {
        Self {
            storage,
            runtime: tokio::runtime::Handle::try_current().ok(),
            followed: Mutex::new(HashMap::new()),
            handed_out: Mutex::new(HandedOut::default()),
        }
    }

    /// This process sent to `pid`: wakes its waiting reads.
    pub(crate) fn sent(&self, pid: u32) {
        if let Some(notify) = self.followed.lock().get(&pid) {
            notify.notify_waiters();
        }
    }

    /// The wake-up of `pid`'s waiting reads, following `admin:bot:PID` from a task (once per
    /// pid, up to [`MAX_FOLLOWED`]; past it, a wake-up only this process's sends ring).
    fn follow(&self, pid: u32) -> Arc<Notify> {
        let mut followed = self.followed.lock();
        if let Some(notify) = followed.get(&pid) {
            return notify.clone();
        }
        let notify = Arc::new(Notify::new());
        if followed.len() >= MAX_FOLLOWED {
            return notify;
        }
        followed.insert(pid, notify.clone());
        let storage = self.storage.clone();
        let wake = notify.clone();
        let task = async move {
            let mut notices = storage.subscribe(&admin_channel(pid)).await;
            // The subscription holds the storage weakly: it ends when the storage closes.
            drop(storage);
            while notices.recv().await.is_some() {
                wake.notify_waiters();
            }
        };
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
        notify
    }

    /// The oldest `max` messages of `pid`'s queue, waiting up to `wait` for one when there is
    /// none.
    pub(crate) async fn receive(
        &self,
        pid: u32,
        max: usize,
        wait: Duration,
    ) -> Result<Received, HeartbeatError> {
        let deadline = tokio::time::Instant::now() + wait;
        let notify = (!wait.is_zero()).then(|| self.follow(pid));
        let mut after_notice = false;
        loop {
            let mut notified = notify.as_deref().map(|n| Box::pin(n.notified()));
            if let Some(n) = notified.as_mut() {
                n.as_mut().enable();
            }
            let read = self.read_head(pid, max).await?;
            let now = tokio::time::Instant::now();
            if !read.messages.is_empty() || now >= deadline {
                return Ok(read);
            }
            let pause = if after_notice { AFTER_NOTICE } else { RECHECK };
            let pause = pause.min(deadline - now);
            tokio::select! {
                _ = notice(&mut notified) => after_notice = true,
                _ = tokio::time::sleep(pause) => after_notice = false,
            }
        }
    }

    /// One read of the queue's head (nothing while the storage is off Redis).
    async fn read_head(&self, pid: u32, max: usize) -> Result<Received, HeartbeatError> {
        let nothing = Received {
            messages: Vec::new(),
            off_redis: true,
        };
        if off_redis(self.storage.mode()) {
            return Ok(nothing);
        }
        let stop = i64::try_from(max).unwrap_or(i64::MAX).saturating_sub(1);
        let entries = self.storage.lrange(&admin_queue(pid), 0, stop).await?;
        // An outage that began during the read: the fallback answered, not Redis.
        if off_redis(self.storage.mode()) {
            return Ok(nothing);
        }
        let mut seen = HashSet::new();
        let mut messages = Vec::with_capacity(entries.len());
        let mut handed_out = self.handed_out.lock();
        for raw in entries {
            let message = QueuedMessage::of(raw);
            // A copy (an envelope appended twice by a replay) is the same message.
            if !seen.insert(message.id.clone()) {
                continue;
            }
            handed_out.remember(pid, &message.id, &message.raw);
            messages.push(message);
        }
        Ok(Received {
            messages,
            off_redis: false,
        })
    }

    /// Removes the entries of `ids` from `pid`'s queue.
    pub(crate) async fn acknowledge(
        &self,
        pid: u32,
        ids: &[String],
    ) -> Result<Acked, HeartbeatError> {
        let queue = admin_queue(pid);
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut entries: Vec<(String, String)> = Vec::new();
        let mut missing: HashSet<&str> = HashSet::new();
        {
            let handed_out = self.handed_out.lock();
            for id in &wanted {
                match handed_out.get(pid, id) {
                    Some(raw) => entries.push((id.to_string(), raw)),
                    None => {
                        missing.insert(id);
                    }
                }
            }
        }
        if !missing.is_empty() && !off_redis(self.storage.mode()) {
            for raw in self.storage.lrange(&queue, 0, ACK_WINDOW - 1).await? {
                let message = QueuedMessage::of(raw);
                if missing.remove(message.id.as_str()) {
                    entries.push((message.id, message.raw));
                }
                if missing.is_empty() {
                    break;
                }
            }
        }
        if entries.is_empty() {
            return Ok(Acked {
                acked: 0,
                off_redis: off_redis(self.storage.mode()),
            });
        }
        let before = self.storage.mode();
        let texts: Vec<&str> = entries.iter().map(|(_, raw)| raw.as_str()).collect();
        let reply = self
            .storage
            .eval(ack_all_script(), &[&queue], &texts)
            .await?;
        let off = off_redis(before) || off_redis(self.storage.mode());
        if off {
            return Ok(Acked {
                acked: entries.len() as u64,
                off_redis: true,
            });
        }
        let mut handed_out = self.handed_out.lock();
        for (id, _) in &entries {
            handed_out.forget(pid, id);
        }
        Ok(Acked {
            acked: u64::try_from(reply.as_int()).unwrap_or(0),
            off_redis: false,
        })
    }
}

/// The wake-up of a waiting read, when it has one; never otherwise.
async fn notice(notified: &mut Option<Pin<Box<tokio::sync::futures::Notified<'_>>>>) {
    match notified {
        Some(n) => n.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Expiry, Op};

    #[test]
    fn envelopes_seed_payloads_and_text_are_read() {
        let e = read_payload(r#"{"id":"s-1","from":"s","message":"hi","sent_at":5}"#);
        assert_eq!(
            (e.id.as_deref(), e.from.as_deref(), e.message.as_str()),
            (Some("s-1"), Some("s"), "hi")
        );
        assert_eq!((e.sent_at_ms, e.kind), (Some(5), PayloadKind::Envelope));

        let seed = read_payload(r#"{"message":"Hello bot!","timestamp":1740227344.5}"#);
        assert_eq!(seed.message, "Hello bot!");
        assert_eq!(seed.sent_at_ms, Some(1_740_227_344_500));
        assert_eq!((seed.id, seed.kind), (None, PayloadKind::Seed));

        let iso = read_payload(
            r#"{"id":"admin_1_ab","type":"admin_message","timestamp":"2024-01-01T00:00:05.250000","message":"go"}"#,
        );
        assert_eq!(iso.id.as_deref(), Some("admin_1_ab"));
        assert_eq!(iso.sent_at_ms, Some(1_704_067_205_250));
        assert_eq!(
            read_payload(r#"{"message":"m","timestamp":1704067205250}"#).sent_at_ms,
            Some(1_704_067_205_250)
        );
        assert_eq!(read_payload(r#"{"message":{"a":1}}"#).message, r#"{"a":1}"#);

        let text = read_payload("Hello bot!");
        assert_eq!(
            (text.message.as_str(), text.kind),
            ("Hello bot!", PayloadKind::Text)
        );
        assert_eq!(read_payload("[1,2]").kind, PayloadKind::Text);
    }

    #[test]
    fn content_ids_are_stable_and_distinct() {
        let a = QueuedMessage::of(r#"{"message":"a","timestamp":1}"#.into());
        let b = QueuedMessage::of(r#"{"message":"a","timestamp":2}"#.into());
        assert!(
            a.id.starts_with("sha256:") && a.id.len() == 7 + 32,
            "{}",
            a.id
        );
        assert_ne!(a.id, b.id);
        assert_eq!(a.id, content_id(r#"{"message":"a","timestamp":1}"#));
    }

    #[test]
    fn the_local_ack_removes_every_copy_and_keeps_the_expiry() {
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
        let n = ack_all_local(
            &mut ks,
            100,
            std::slice::from_ref(&key),
            &["a".into(), "x".into()],
        )
        .unwrap();
        assert_eq!(n, Reply::Int(1));
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
        assert_eq!(rest, vec!["b".to_string(), "c".to_string()]);
        assert_eq!(ks.apply(&Op::Pttl { key }, 100).unwrap(), Reply::Int(9_900));
    }

    #[test]
    fn handed_out_texts_are_bounded() {
        let mut h = HandedOut::default();
        for i in 0..HANDED_OUT_MAX + 10 {
            h.remember(1, &i.to_string(), "raw");
        }
        assert_eq!(h.texts.len(), HANDED_OUT_MAX);
        assert!(h.get(1, "0").is_none());
        assert!(h.get(1, &(HANDED_OUT_MAX + 9).to_string()).is_some());
        // Forgotten, then handed out again: the old place in the order does not evict it.
        let id = (HANDED_OUT_MAX + 9).to_string();
        h.forget(1, &id);
        h.remember(1, &id, "again");
        for i in 0..HANDED_OUT_MAX - 1 {
            h.remember(2, &i.to_string(), "raw");
        }
        assert_eq!(h.get(1, &id).as_deref(), Some("again"));
    }
}
