//! Shared by the supervision tests: a fault-injecting actor and small helpers.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use botfleet::settings::SupervisorSettings;
use botfleet::supervisor::{ActorHandle, ActorSystem, ChildContext, ChildSpec, Supervisor};

/// Names of actors whose `stopped()` ran, in order.
pub type StopLog = Arc<Mutex<Vec<String>>>;

/// Counts messages; panics, fails, hangs or refuses to stop on request.
pub struct Faulty {
    pub name: String,
    pub count: u64,
    pub cx: ChildContext,
    pub stops: StopLog,
    /// Panic when the counter reaches this value.
    pub panic_at: Option<u64>,
    /// The interval closure panics once this is set.
    pub interval_armed: bool,
    /// `stopping()` refuses to stop.
    pub stubborn: bool,
    /// `started()` schedules a panic shortly after start.
    pub crash_after_start: bool,
    /// `started()` waits this long before the actor counts as started.
    pub slow_start: Option<Duration>,
}

impl Faulty {
    pub fn new(name: &str, cx: &ChildContext, stops: &StopLog) -> Self {
        Self {
            name: name.to_owned(),
            count: 0,
            cx: cx.clone(),
            stops: Arc::clone(stops),
            panic_at: None,
            interval_armed: false,
            stubborn: false,
            crash_after_start: false,
            slow_start: None,
        }
    }
}

impl Actor for Faulty {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_millis(5), |act, _| {
            if act.interval_armed {
                panic!("interval panic in {}", act.name);
            }
        });
        if let Some(delay) = self.slow_start {
            ctx.wait(actix::fut::wrap_future(tokio::time::sleep(delay)));
        }
        if self.crash_after_start {
            ctx.run_later(Duration::from_millis(2), |act, _| {
                panic!("crash loop in {}", act.name);
            });
        }
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        if self.stubborn {
            Running::Continue
        } else {
            Running::Stop
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // `lock` cannot fail here unless a test thread panicked while holding the log.
        if let Ok(mut stops) = self.stops.lock() {
            stops.push(self.name.clone());
        }
    }
}

#[derive(Message)]
#[rtype(result = "u64")]
pub struct Increment;

impl Handler<Increment> for Faulty {
    type Result = u64;
    fn handle(&mut self, _: Increment, _: &mut Context<Self>) -> u64 {
        self.count += 1;
        if self.panic_at == Some(self.count) {
            panic!("panic on message {}", self.count);
        }
        self.count
    }
}

#[derive(Message)]
#[rtype(result = "u64")]
pub struct GetCount;

impl Handler<GetCount> for Faulty {
    type Result = u64;
    fn handle(&mut self, _: GetCount, _: &mut Context<Self>) -> u64 {
        self.count
    }
}

#[derive(Message)]
#[rtype(result = "u64")]
pub struct GetIncarnation;

impl Handler<GetIncarnation> for Faulty {
    type Result = u64;
    fn handle(&mut self, _: GetIncarnation, _: &mut Context<Self>) -> u64 {
        self.cx.incarnation()
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct PanicNow;

impl Handler<PanicNow> for Faulty {
    type Result = ();
    fn handle(&mut self, _: PanicNow, _: &mut Context<Self>) {
        panic!("handler panic in {}", self.name);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct ArmInterval;

impl Handler<ArmInterval> for Faulty {
    type Result = ();
    fn handle(&mut self, _: ArmInterval, _: &mut Context<Self>) {
        self.interval_armed = true;
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct ReportFatal(pub String);

impl Handler<ReportFatal> for Faulty {
    type Result = ();
    fn handle(&mut self, msg: ReportFatal, ctx: &mut Context<Self>) {
        self.cx.fail(ctx, msg.0);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct StopNormally;

impl Handler<StopNormally> for Faulty {
    type Result = ();
    fn handle(&mut self, _: StopNormally, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Blocks the arbiter thread (a synchronous handler that hangs) until `release` is signalled
/// or dropped; says when it has started blocking.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Hang {
    pub entered: tokio::sync::oneshot::Sender<()>,
    pub release: std::sync::mpsc::Receiver<()>,
}

impl Handler<Hang> for Faulty {
    type Result = ();
    fn handle(&mut self, msg: Hang, _: &mut Context<Self>) {
        let _ = msg.entered.send(());
        let _ = msg.release.recv();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Logs to the test output, and prints panics on one line. With `RUST_BACKTRACE=1` the
/// default hook would first symbolize a backtrace on the actor's thread (150-250 ms for the
/// first panic of a debug build), and that time would be counted in the restart latencies
/// measured here. Runs before any `ActorSystem::start`, whose recording hook chains to this one.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("botfleet=debug")
            .try_init();
        std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    });
}

/// Default policy with deadlines short enough for tests.
pub fn settings() -> SupervisorSettings {
    SupervisorSettings {
        stop_timeout_ms: 1_000,
        ..SupervisorSettings::default()
    }
}

/// Polls `check` until it yields a value, failing the test after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until the actor answers from incarnation `incarnation`; returns the time it took.
pub async fn until_incarnation(
    handle: &ActorHandle<Faulty>,
    incarnation: u64,
    since: Instant,
) -> Duration {
    eventually(
        "the new incarnation to answer",
        Duration::from_secs(3),
        || async {
            (handle.send(GetIncarnation).await == Ok(incarnation)).then(|| since.elapsed())
        },
    )
    .await
}

pub fn spec(name: &'static str, stops: &StopLog) -> ChildSpec<Faulty> {
    let stops = Arc::clone(stops);
    ChildSpec::new(name, move |cx| Faulty::new(name, cx, &stops))
}

pub fn bound(settings: &SupervisorSettings) -> Duration {
    Duration::from_millis(settings.backoff_base_ms + 100)
}

pub async fn finish(supervisor: Supervisor, system: ActorSystem) {
    supervisor.shutdown().await.expect("clean shutdown");
    let report = system.stop().await;
    assert!(report.is_clean(), "threads left behind: {report:?}");
}
