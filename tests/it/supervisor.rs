//! Supervision with real actix actors that inject faults: a panic in a handler or a timer
//! closure, a reported fatal error, a handler that hangs, an actor that refuses to stop.
//!
//! Restart latencies are printed (`cargo nextest run --test supervisor --no-capture`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::faulty::*;
use botfleet::settings::SupervisorSettings;
use botfleet::supervisor::{
    ActorSystem, CallError, ChildSpec, ChildState, Exit, RestartType, StopOutcome,
    SupervisorBuilder, SupervisorError,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_restarts_fast_and_spares_the_sibling() {
    init_tracing();
    let settings = settings();
    let system = ActorSystem::start("panic-test").unwrap();
    let stops = StopLog::default();
    let mut tree = SupervisorBuilder::new("root", settings.clone());
    let crashy = tree.child(ChildSpec::new("crashy", {
        let stops = Arc::clone(&stops);
        move |cx| Faulty {
            panic_at: Some(4),
            ..Faulty::new("crashy", cx, &stops)
        }
    }));
    let sibling = tree.child(spec("sibling", &stops));
    let supervisor = tree.start(&system).await.unwrap();
    let old_handle = crashy.clone();

    for expected in 1..=3 {
        assert_eq!(crashy.send(Increment).await, Ok(expected));
    }
    for _ in 0..5 {
        sibling.send(Increment).await.unwrap();
    }

    // The sibling answers throughout the crash and keeps its state.
    let hammer = {
        let sibling = sibling.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut answered = 0_u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                sibling
                    .send(GetCount)
                    .await
                    .expect("sibling answers during the crash");
                answered += 1;
                tokio::task::yield_now().await;
            }
            answered
        });
        (stop, task)
    };

    let t0 = Instant::now();
    let in_flight = crashy.send(Increment).await;
    assert_eq!(
        in_flight,
        Err(CallError::ActorRestarted {
            actor: "crashy".into()
        })
    );
    let latency = until_incarnation(&crashy, 2, t0).await;
    println!(
        "restart latency after a handler panic: {latency:?} (bound {:?})",
        bound(&settings)
    );
    assert!(latency <= bound(&settings), "restart took {latency:?}");

    assert_eq!(
        old_handle.send(GetCount).await,
        Ok(0),
        "old handle reaches the fresh actor"
    );
    hammer.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = hammer.1.await.unwrap();
    assert!(answered > 0);
    assert_eq!(
        sibling.send(GetCount).await,
        Ok(5),
        "sibling kept its state"
    );

    // The actor answers before its supervisor has processed the notice that it started.
    let health = eventually(
        "crashy to be reported running",
        Duration::from_secs(1),
        || {
            let health = supervisor.health();
            let running = health
                .actor("crashy")
                .is_some_and(|a| a.state == ChildState::Running);
            async move { running.then_some(health) }
        },
    )
    .await;
    let crashy_health = health.actor("crashy").unwrap();
    assert_eq!(crashy_health.restarts, 1);
    assert_eq!(crashy_health.incarnation, 2);
    let failure = crashy_health.last_failure.as_deref().unwrap();
    assert!(failure.contains("panic on message 4"), "{failure}");
    assert!(crashy_health.last_failure_unix_ms.is_some());
    assert!(crashy_health.uptime_ms.is_some());
    let sibling_health = health.actor("sibling").unwrap();
    assert_eq!(
        (sibling_health.restarts, sibling_health.state),
        (0, ChildState::Running)
    );
    let json = serde_json::to_string(&health).unwrap();
    assert!(json.contains("\"state\":\"running\""), "{json}");

    finish(supervisor, system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_closure_panic_restarts_the_actor() {
    init_tracing();
    let settings = settings();
    let system = ActorSystem::start("interval-test").unwrap();
    let stops = StopLog::default();
    let mut tree = SupervisorBuilder::new("root", settings.clone());
    let ticker = tree.child(spec("ticker", &stops));
    let supervisor = tree.start(&system).await.unwrap();
    let mut events = supervisor.subscribe();

    ticker.send(Increment).await.unwrap();
    let t0 = Instant::now();
    ticker.send(ArmInterval).await.unwrap();
    let latency = until_incarnation(&ticker, 2, t0).await;
    println!("restart latency after an interval-closure panic: {latency:?} (includes up to 5 ms until the tick)");
    assert!(
        latency <= bound(&settings) + Duration::from_millis(5),
        "restart took {latency:?}"
    );
    assert_eq!(
        ticker.send(GetCount).await,
        Ok(0),
        "fresh state after restart"
    );

    let failure = supervisor
        .health()
        .actor("ticker")
        .unwrap()
        .last_failure
        .clone()
        .unwrap();
    assert!(failure.contains("interval panic in ticker"), "{failure}");
    let restarted = eventually("the restart event", Duration::from_secs(1), || {
        let next = events.try_recv().ok();
        async move { next }
    })
    .await;
    println!("event: {}", serde_json::to_string(&restarted).unwrap());

    finish(supervisor, system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_fatal_error_restarts_the_actor() {
    init_tracing();
    let settings = settings();
    let system = ActorSystem::start("fatal-test").unwrap();
    let stops = StopLog::default();
    let mut tree = SupervisorBuilder::new("root", settings.clone());
    let worker = tree.child(spec("worker", &stops));
    let supervisor = tree.start(&system).await.unwrap();

    let t0 = Instant::now();
    assert_eq!(
        worker.send(ReportFatal("disk full".into())).await,
        Ok(()),
        "reply still delivered"
    );
    let latency = until_incarnation(&worker, 2, t0).await;
    println!(
        "restart latency after a reported fatal error: {latency:?} (bound {:?})",
        bound(&settings)
    );
    assert!(latency <= bound(&settings), "restart took {latency:?}");
    let health = supervisor.health();
    let failure = health
        .actor("worker")
        .unwrap()
        .last_failure
        .clone()
        .unwrap();
    assert_eq!(failure, Exit::Failed("disk full".into()).to_string());
    assert_eq!(
        stops.lock().unwrap().as_slice(),
        ["worker"],
        "stopped() ran once"
    );

    finish(supervisor, system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_actor_is_abandoned_and_replaced() {
    init_tracing();
    let settings = SupervisorSettings {
        watchdog_ms: 300,
        ..settings()
    };
    let system = ActorSystem::start("hang-test").unwrap();
    let stops = StopLog::default();
    let mut tree = SupervisorBuilder::new("root", settings.clone());
    let stuck = tree.child(spec("stuck", &stops));
    let sibling = tree.child(spec("sibling", &stops));
    let supervisor = tree.start(&system).await.unwrap();
    sibling.send(Increment).await.unwrap();

    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    let request = tokio::spawn({
        let stuck = stuck.clone();
        async move {
            stuck
                .send(Hang {
                    entered: entered_tx,
                    release: release_rx,
                })
                .await
        }
    });
    entered_rx.await.unwrap();
    assert_eq!(
        sibling.send(GetCount).await,
        Ok(1),
        "a sibling answers while one actor hangs"
    );

    let outcome = request.await.unwrap();
    let detected = t0.elapsed();
    assert_eq!(
        outcome,
        Err(CallError::ActorRestarted {
            actor: "stuck".into()
        })
    );
    let latency = until_incarnation(&stuck, 2, t0).await;
    println!(
        "hang: in-flight request failed after {detected:?}, new incarnation answered after \
         {latency:?} (watchdog {} ms)",
        settings.watchdog_ms
    );
    let watchdog = Duration::from_millis(settings.watchdog_ms);
    assert!(detected >= watchdog, "abandoned too early: {detected:?}");
    assert!(
        latency <= watchdog + watchdog / 4 + bound(&settings),
        "replacement took {latency:?}"
    );
    let failure = supervisor
        .health()
        .actor("stuck")
        .unwrap()
        .last_failure
        .clone()
        .unwrap();
    assert!(failure.starts_with("hung"), "{failure}");
    assert_eq!(sibling.send(GetCount).await, Ok(1));

    // Let the blocked thread go, so that the actor system can join it.
    drop(release_tx);
    finish(supervisor, system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_and_queued_requests_get_actor_restarted() {
    init_tracing();
    let system = ActorSystem::start("inflight-test").unwrap();
    let stops = StopLog::default();
    let mut tree = SupervisorBuilder::new("root", settings());
    let actor = tree.child(spec("victim", &stops));
    let supervisor = tree.start(&system).await.unwrap();

    // Block the actor, queue a panic and a request behind it, then let it go.
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let blocker = tokio::spawn({
        let actor = actor.clone();
        async move {
            actor
                .send(Hang {
                    entered: entered_tx,
                    release: release_rx,
                })
                .await
        }
    });
    entered_rx.await.unwrap();
    let panicking = tokio::spawn({
        let actor = actor.clone();
        async move { actor.send(PanicNow).await }
    });
    eventually("the panic to be queued", Duration::from_secs(1), || async {
        (actor.pending() == 2).then_some(())
    })
    .await;
    let queued = tokio::spawn({
        let actor = actor.clone();
        async move { actor.send(GetCount).await }
    });
    eventually(
        "the request to be queued",
        Duration::from_secs(1),
        || async { (actor.pending() == 3).then_some(()) },
    )
    .await;
    release_tx.send(()).unwrap();

    let restarted = CallError::ActorRestarted {
        actor: "victim".into(),
    };
    assert_eq!(
        blocker.await.unwrap(),
        Ok(()),
        "the request handled before the panic succeeds"
    );
    assert_eq!(
        panicking.await.unwrap(),
        Err(restarted.clone()),
        "in-flight request"
    );
    assert_eq!(queued.await.unwrap(), Err(restarted), "queued request");
    until_incarnation(&actor, 2, Instant::now()).await;

    finish(supervisor, system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_types_permanent_transient_temporary() {
    init_tracing();
    let system = ActorSystem::start("types-test").unwrap();
    let stops = StopLog::default();
    let mut tree = SupervisorBuilder::new("root", settings());
    let permanent = tree.child(spec("permanent", &stops));
    let transient = tree.child(spec("transient", &stops).restart(RestartType::Transient));
    let transient_failing =
        tree.child(spec("transient-failing", &stops).restart(RestartType::Transient));
    let temporary = tree.child(spec("temporary", &stops).restart(RestartType::Temporary));
    let supervisor = tree.start(&system).await.unwrap();
    let now = Instant::now();

    // Permanent: restarted even after a normal stop.
    permanent.send(StopNormally).await.unwrap();
    until_incarnation(&permanent, 2, now).await;

    // Transient: a normal stop is final, a failure is restarted.
    transient.send(StopNormally).await.unwrap();
    let state = |name: &'static str| {
        let health = supervisor.health();
        health.actor(name).map(|actor| actor.state)
    };
    eventually("transient to stop", Duration::from_secs(1), || async {
        (state("transient") == Some(ChildState::Stopped)).then_some(())
    })
    .await;
    assert_eq!(
        transient.send(GetCount).await,
        Err(CallError::Stopped {
            actor: "transient".into()
        })
    );
    let _ = transient_failing.send(PanicNow).await;
    until_incarnation(&transient_failing, 2, now).await;

    // Temporary: not even a failure is restarted.
    assert_eq!(
        temporary.send(PanicNow).await,
        Err(CallError::Stopped {
            actor: "temporary".into()
        })
    );
    assert_eq!(state("temporary"), Some(ChildState::Failed));
    assert_eq!(
        temporary.send(GetCount).await,
        Err(CallError::Stopped {
            actor: "temporary".into()
        })
    );

    let health = supervisor.health();
    let restarts: Vec<_> = health
        .actors
        .iter()
        .map(|a| (a.actor.as_str(), a.restarts))
        .collect();
    assert_eq!(
        restarts,
        [
            ("permanent", 1),
            ("transient", 0),
            ("transient-failing", 1),
            ("temporary", 0)
        ]
    );
    let report = supervisor.shutdown().await.unwrap();
    let outcomes: Vec<_> = report
        .children
        .iter()
        .map(|c| (c.actor.as_str(), c.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("temporary", StopOutcome::NotRunning),
            ("transient-failing", StopOutcome::Stopped),
            ("transient", StopOutcome::NotRunning),
            ("permanent", StopOutcome::Stopped),
        ]
    );
    assert!(system.stop().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intensity_exceeded_stops_the_tree_with_an_error_naming_the_actor() {
    init_tracing();
    let settings = SupervisorSettings {
        max_restarts: 3,
        within_secs: 10,
        backoff_base_ms: 5,
        ..settings()
    };
    let system = ActorSystem::start("intensity-test").unwrap();
    let stops = StopLog::default();
    let mut tree = SupervisorBuilder::new("root", settings);
    let steady = tree.child(spec("steady", &stops));
    let crasher = tree.child(ChildSpec::new("crasher", {
        let stops = Arc::clone(&stops);
        // After the first failure, every incarnation dies 2 ms after its start.
        move |cx| Faulty {
            crash_after_start: cx.incarnation() > 1,
            ..Faulty::new("crasher", cx, &stops)
        }
    }));
    let bystander = tree.child(spec("bystander", &stops));
    let supervisor = tree.start(&system).await.unwrap();

    let t0 = Instant::now();
    let _ = crasher.send(PanicNow).await;
    let error = tokio::time::timeout(Duration::from_secs(3), supervisor.wait())
        .await
        .expect("the tree gives up")
        .expect_err("an escalation error");
    println!("gave up after {:?}: {error}", t0.elapsed());
    match &error {
        SupervisorError::IntensityExceeded {
            actor,
            last_failure,
            restarts,
            ..
        } => {
            assert_eq!(actor, "crasher");
            assert_eq!(*restarts, 4);
            assert!(
                matches!(last_failure, Exit::Panicked(m) if m.contains("crash loop in crasher"))
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.contains("crasher") && text.contains("crash loop in crasher"),
        "{text}"
    );
    assert!(!supervisor.is_running());

    // The other children were stopped in reverse order; their handles report it.
    let stopped: Vec<String> = stops
        .lock()
        .unwrap()
        .iter()
        .filter(|name| *name != "crasher")
        .cloned()
        .collect();
    assert_eq!(stopped, ["bystander", "steady"]);
    assert_eq!(
        steady.send(GetCount).await,
        Err(CallError::Stopped {
            actor: "steady".into()
        })
    );
    assert_eq!(
        crasher.send(GetCount).await,
        Err(CallError::Stopped {
            actor: "crasher".into()
        })
    );
    let health = supervisor.health();
    assert_eq!(health.actor("crasher").unwrap().state, ChildState::Failed);
    assert_eq!(health.actor("crasher").unwrap().restarts, 3);
    assert_eq!(
        bystander.send(GetCount).await,
        Err(CallError::Stopped {
            actor: "bystander".into()
        })
    );
    assert_eq!(
        supervisor.shutdown().await,
        Err(error),
        "shutdown reports the same error"
    );
    assert!(system.stop().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_children_in_reverse_order_within_the_deadline() {
    init_tracing();
    let settings = SupervisorSettings {
        stop_timeout_ms: 300,
        ..settings()
    };
    let system = ActorSystem::start("shutdown-test").unwrap();
    let stops = StopLog::default();
    let mut tree = SupervisorBuilder::new("root", settings.clone());
    let stubborn = tree.child(ChildSpec::new("stubborn", {
        let stops = Arc::clone(&stops);
        move |cx| Faulty {
            stubborn: true,
            ..Faulty::new("stubborn", cx, &stops)
        }
    }));
    let first = tree.child(spec("first", &stops));
    let second = tree.child(spec("second", &stops));
    let third = tree.child(spec("third", &stops));
    let supervisor = tree.start(&system).await.unwrap();
    for handle in [&first, &second, &third, &stubborn] {
        handle.send(Increment).await.unwrap();
    }

    let report = supervisor.shutdown().await.unwrap();
    println!(
        "shutdown report: {}",
        serde_json::to_string(&report).unwrap()
    );
    assert_eq!(
        report.stop_order(),
        ["third", "second", "first", "stubborn"]
    );
    assert_eq!(stops.lock().unwrap()[..3], ["third", "second", "first"]);
    assert_eq!(report.abandoned(), ["stubborn"]);
    for child in &report.children {
        let limit = settings.stop_timeout_ms + 100;
        assert!(
            child.elapsed_ms <= limit,
            "{} took {} ms",
            child.actor,
            child.elapsed_ms
        );
        if child.actor != "stubborn" {
            assert_eq!(child.outcome, StopOutcome::Stopped);
        }
    }
    assert_eq!(
        first.send(GetCount).await,
        Err(CallError::Stopped {
            actor: "first".into()
        })
    );
    assert_eq!(
        stubborn.send(GetCount).await,
        Err(CallError::Stopped {
            actor: "stubborn".into()
        })
    );
    assert!(
        system.stop().await.is_clean(),
        "the abandoned arbiter still exits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_failing_at_start_stops_the_ones_started_before_it() {
    init_tracing();
    let system = ActorSystem::start("start-test").unwrap();
    let stops = StopLog::default();
    let mut tree = SupervisorBuilder::new("root", settings());
    let first = tree.child(spec("first", &stops));
    tree.child(ChildSpec::<Faulty>::new("broken", |_| {
        panic!("cannot build broken")
    }));
    tree.child(spec("never", &stops));
    let error = tree.start(&system).await.expect_err("start fails");
    match &error {
        SupervisorError::StartFailed { actor, error } => {
            assert_eq!(actor, "broken");
            assert!(matches!(error, Exit::Panicked(m) if m.contains("cannot build broken")));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(stops.lock().unwrap().as_slice(), ["first"]);
    assert_eq!(
        first.send(GetCount).await,
        Err(CallError::Stopped {
            actor: "first".into()
        })
    );
    assert!(system.stop().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_dying_while_a_later_one_starts_is_restarted_after_the_start() {
    init_tracing();
    let system = ActorSystem::start("early-crash-test").unwrap();
    let stops = StopLog::default();
    let mut tree = SupervisorBuilder::new("root", settings());
    let early = tree.child(ChildSpec::new("early", {
        let stops = Arc::clone(&stops);
        move |cx| Faulty {
            crash_after_start: cx.incarnation() == 1,
            ..Faulty::new("early", cx, &stops)
        }
    }));
    tree.child(ChildSpec::new("slow", {
        let stops = Arc::clone(&stops);
        move |cx| Faulty {
            slow_start: Some(Duration::from_millis(100)),
            ..Faulty::new("slow", cx, &stops)
        }
    }));
    let supervisor = tree.start(&system).await.expect("the tree starts");
    until_incarnation(&early, 2, Instant::now()).await;
    let health = supervisor.health();
    assert_eq!(health.actor("early").unwrap().restarts, 1);
    assert_eq!(health.actor("slow").unwrap().restarts, 0);
    finish(supervisor, system).await;
}

#[test]
fn works_from_a_plain_thread_and_the_send_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    init_tracing();
    let system = ActorSystem::start("plain-thread").unwrap();
    let stops = StopLog::default();
    let mut tree = SupervisorBuilder::new("root", settings());
    let counter = tree.child(spec("counter", &stops));
    let supervisor = futures::executor::block_on(tree.start(&system)).unwrap();
    let call = counter.send(Increment);
    assert_send(&call);
    assert_eq!(futures::executor::block_on(call), Ok(1));
    assert_eq!(counter.do_send(Increment), Ok(()));
    drop(supervisor); // shuts the tree down
    assert!(system.stop_blocking().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_system_under_a_running_tree_resolves_every_waiter() {
    init_tracing();
    let system = ActorSystem::start("abrupt-test").unwrap();
    let stops = StopLog::default();
    let mut tree = SupervisorBuilder::new("root", settings());
    let worker = tree.child(spec("worker", &stops));
    let supervisor = tree.start(&system).await.unwrap();
    worker.send(Increment).await.unwrap();

    let report = system.stop().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        worker.send(GetCount).await,
        Err(CallError::Stopped {
            actor: "worker".into()
        })
    );
    assert_eq!(supervisor.wait().await, Err(SupervisorError::SystemStopped));
    let health = supervisor.health();
    assert_eq!(health.actor("worker").unwrap().state, ChildState::Stopped);
    assert_eq!(stops.lock().unwrap().as_slice(), ["worker"]);
}
