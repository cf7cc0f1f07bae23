//! Batching of this process's concurrent acquisitions and releases.
//!
//! A lock call is one script on Redis, and on a busy Redis most of a script's cost is the
//! call itself, not the two or three commands inside. So up to [`MAX_IN_FLIGHT`] calls of a
//! script go out at once, on their callers' tasks; calls that arrive while that many are in
//! flight queue, and the next free slot sends them together as one call of the same script
//! (its KEYS and ARGV are per-request groups). A call made while others are in flight
//! gathers first: it lets the tasks ready to run go ahead (typically the callers the last
//! answer woke), and what they ask for meanwhile queues and goes out with its own request,
//! in one call and one socket write. A process with one call at a time pays nothing for
//! this. On Redis Cluster a batch is split by hash slot, since one script may only touch
//! keys of one slot; there calls do not gather.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::storage::{group_by_slot, Reply, Script, Storage, StorageError};

/// Requests sent in one script call at most.
const MAX_BATCH: usize = 256;
/// Calls of one script in flight at once (several keep the connections' pipelines busy while
/// a batch is answered). Fewer calls carry more requests each, which costs both sides less
/// per request; more calls overlap the client's work with the server's. 50 tasks taking locks
/// of their own made the most pairs per second with 8: 1-13% more than with 16 in each of four
/// alternating rounds (0.71 calls per pair instead of 1.17, and about 1 µs less CPU per pair
/// on each side), and as many or more than with 4, 2, 6 or 12.
pub(super) const MAX_IN_FLIGHT: usize = 8;

/// One request, in the script's per-request layout.
#[derive(Debug, Clone)]
pub(super) struct Request {
    /// Its keys; the first is the lock (it decides the cluster slot).
    pub(super) keys: Vec<String>,
    /// Its arguments.
    pub(super) args: Vec<String>,
}

/// What a request gets back: the script's integer for it.
pub(super) type Outcome = Result<i64, StorageError>;

/// Told about a request whose caller was gone when its answer came (its future was
/// dropped), with that answer, or whose call failed in a way that may have run it (with
/// [`POSSIBLY_GRANTED`]): an acquisition nobody will guard must be released.
pub(super) type Orphan = Box<dyn Fn(Request, i64) + Send + Sync>;

/// The answer given to the orphan handler for a request whose call failed ambiguously.
pub(super) const POSSIBLY_GRANTED: i64 = i64::MAX;

/// One script's batcher.
pub(super) struct Batcher {
    storage: Storage,
    script: &'static Script,
    /// Arguments that come before the per-request ones (the release channel).
    head_args: Vec<String>,
    orphan: Option<Orphan>,
    runtime: Option<tokio::runtime::Handle>,
    /// Script calls sent, and the requests they carried.
    calls: AtomicU64,
    requests: AtomicU64,
    // A parking_lot mutex: a push or a drain under it, never an await.
    state: Mutex<State>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Batcher")
            .field("script", &self.script)
            .field("in_flight", &state.in_flight)
            .field("pending", &state.pending.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Calls of this script in flight (on callers' tasks or drain tasks).
    in_flight: usize,
    /// A caller is gathering: it let the tasks ready to run go first, and sends what they
    /// queued meanwhile with its own request (see [`Batcher::call`]).
    gathering: bool,
    /// Requests waiting for the next call.
    pending: Vec<(Request, oneshot::Sender<Outcome>)>,
}

impl Batcher {
    pub(super) fn new(
        storage: Storage,
        script: &'static Script,
        head_args: Vec<String>,
        orphan: Option<Orphan>,
    ) -> Arc<Self> {
        Arc::new(Self {
            storage,
            script,
            head_args,
            orphan,
            runtime: tokio::runtime::Handle::try_current().ok(),
            calls: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        })
    }

    /// Requests waiting for the next call; script calls sent; requests they carried.
    pub(super) fn counts(&self) -> (usize, u64, u64) {
        let queued = self.state.lock().pending.len();
        (
            queued,
            self.calls.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }

    /// Runs `request`: at once while fewer than [`MAX_IN_FLIGHT`] calls are in flight, else
    /// with the next batch.
    ///
    /// A call made while others are in flight first gathers: it lets the tasks ready to run
    /// on its worker go first (one `yield_now`), and the requests they make meanwhile queue
    /// and go out with its own in one call. Those tasks are typically the callers woken by
    /// the last answer; without gathering each sent its own call, one socket write each.
    /// A lone caller (nothing in flight) sends at once.
    pub(super) async fn call(self: &Arc<Self>, request: Request) -> Outcome {
        let queued = {
            let mut state = self.state.lock();
            if state.in_flight >= MAX_IN_FLIGHT || state.gathering {
                let (tx, rx) = oneshot::channel();
                state.pending.push((request, tx));
                Err(rx)
            } else {
                let gather = state.in_flight > 0 && !self.storage.is_clustered();
                state.in_flight += 1;
                state.gathering = gather;
                Ok((request, gather))
            }
        };
        let (request, gather) = match queued {
            Ok(turn) => turn,
            Err(rx) => {
                return rx.await.unwrap_or_else(|_| {
                    Err(StorageError::Unavailable(
                        "the lock batch was dropped".into(),
                    ))
                })
            }
        };
        // Our turn: whatever queues up meanwhile is sent when it ends, even if this future is
        // dropped half-way.
        let _turn = Turn(self.clone());
        let gathered = if gather {
            let gathering = Gathering(self);
            tokio::task::yield_now().await;
            drop(gathering);
            let mut state = self.state.lock();
            let n = state.pending.len().min(MAX_BATCH - 1);
            state.pending.drain(..n).collect()
        } else {
            Vec::new()
        };
        let requests = std::iter::once(&request).chain(gathered.iter().map(|(r, _)| r));
        match self.run(1 + gathered.len(), requests).await {
            Ok(mut values) => {
                // `run` answers one value per request: ours first, then the gathered ones.
                let own = values.remove(0);
                self.answer(gathered, Ok(values));
                Ok(own)
            }
            Err(e) => {
                self.abandon(&request, &e);
                self.answer(gathered, Err(e.clone()));
                Err(e)
            }
        }
    }

    /// A call that failed may still have run on Redis (a timeout or a lost connection after
    /// sending): its requests are handed to the orphan handler as possibly granted, so that
    /// nothing stays held under a token no caller has. (Releasing is token-checked: a request
    /// that did not run changes nothing.)
    fn abandon(&self, request: &Request, error: &StorageError) {
        if let (Some(orphan), StorageError::Unavailable(_)) = (&self.orphan, error) {
            orphan(request.clone(), POSSIBLY_GRANTED);
        }
    }

    /// One script call for `requests` (all in one slot on a cluster).
    async fn run<'a>(
        &self,
        count: usize,
        requests: impl Iterator<Item = &'a Request>,
    ) -> Result<Vec<i64>, StorageError> {
        let mut keys = Vec::with_capacity(count * 3);
        let mut args: Vec<&str> = Vec::with_capacity(self.head_args.len() + count * 3);
        args.extend(self.head_args.iter().map(String::as_str));
        for r in requests {
            keys.extend(r.keys.iter().map(String::as_str));
            args.extend(r.args.iter().map(String::as_str));
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(count as u64, Ordering::Relaxed);
        let reply = self.storage.eval_lock(self.script, &keys, &args).await?;
        let values = answers(&reply);
        if values.len() != count {
            return Err(StorageError::Command(format!(
                "{}: {} answers for {} requests",
                self.script.name(),
                values.len(),
                count
            )));
        }
        Ok(values)
    }

    /// Sends the queued requests, batch after batch, until none is left.
    async fn drain(self: Arc<Self>) {
        loop {
            let batch: Vec<_> = {
                let mut state = self.state.lock();
                if state.pending.is_empty() {
                    state.in_flight -= 1;
                    return;
                }
                let n = state.pending.len().min(MAX_BATCH);
                state.pending.drain(..n).collect()
            };
            if self.storage.is_clustered() {
                let groups = group_by_slot(batch, |(request, _)| &request.keys[0]);
                futures::future::join_all(groups.into_iter().map(|g| self.send(g))).await;
            } else {
                self.send(batch).await;
            }
        }
    }

    async fn send(&self, group: Vec<(Request, oneshot::Sender<Outcome>)>) {
        let outcome = self.run(group.len(), group.iter().map(|(r, _)| r)).await;
        self.answer(group, outcome);
    }

    /// Gives each queued request of `group` its answer from `outcome` (the call's values, in
    /// order); a request whose caller is gone goes to the orphan handler.
    fn answer(
        &self,
        group: Vec<(Request, oneshot::Sender<Outcome>)>,
        outcome: Result<Vec<i64>, StorageError>,
    ) {
        match outcome {
            Ok(values) => {
                for ((request, tx), value) in group.into_iter().zip(values) {
                    if tx.send(Ok(value)).is_err() {
                        if let Some(orphan) = &self.orphan {
                            orphan(request, value);
                        }
                    }
                }
            }
            Err(e) => {
                for (request, tx) in group {
                    self.abandon(&request, &e);
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The per-request answers in a lock script's reply: an array, or the integer alone of a
/// call of one request.
fn answers(reply: &Reply) -> Vec<i64> {
    match reply {
        Reply::Array(items) => items.iter().map(Reply::as_int).collect(),
        other => vec![other.as_int()],
    }
}

/// The first request's answer in a lock script's reply ([`answers`]), 0 when there is none.
pub(super) fn first_answer(reply: &Reply) -> i64 {
    answers(reply).first().copied().unwrap_or(0)
}

/// A caller gathering requests: whether it goes on or its future is dropped, the next
/// caller may gather again.
struct Gathering<'a>(&'a Batcher);

impl Drop for Gathering<'_> {
    fn drop(&mut self) {
        self.0.state.lock().gathering = false;
    }
}

/// The end of a caller's call: its slot goes to a drain task for the queue, or is freed.
struct Turn(Arc<Batcher>);

impl Drop for Turn {
    fn drop(&mut self) {
        let batcher = &self.0;
        let mut state = batcher.state.lock();
        if state.pending.is_empty() {
            state.in_flight -= 1;
            return;
        }
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| batcher.runtime.clone());
        match runtime {
            Some(runtime) => {
                drop(state);
                runtime.spawn(batcher.clone().drain());
            }
            None => {
                // No runtime to run a batch on (the process is shutting down): fail the queue.
                state.in_flight -= 1;
                for (_, tx) in state.pending.drain(..) {
                    let _ = tx.send(Err(StorageError::Unavailable("no runtime".into())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_answer_is_read_from_an_array_or_an_integer_alone() {
        assert_eq!(
            first_answer(&Reply::Int(1_796_605_463_495_552)),
            1_796_605_463_495_552
        );
        assert_eq!(first_answer(&Reply::Int(0)), 0);
        let batch = Reply::Array(vec![Reply::Int(7), Reply::Int(0)]);
        assert_eq!(first_answer(&batch), 7);
        assert_eq!(first_answer(&Reply::Array(Vec::new())), 0);
    }
}
