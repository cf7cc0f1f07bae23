//! Starting and stopping an `ActorSystem` (with a supervision tree on it) leaves no thread
//! behind. In a test binary of its own, so that no other test's threads are counted.

use std::time::{Duration, Instant};

use actix::prelude::*;
use botfleet::settings::SupervisorSettings;
use botfleet::supervisor::{ActorSystem, ChildSpec, SupervisorBuilder};

struct Echo;

impl Actor for Echo {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "u32")]
struct Ping(u32);

impl Handler<Ping> for Echo {
    type Result = u32;
    fn handle(&mut self, msg: Ping, _: &mut Context<Self>) -> u32 {
        msg.0
    }
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_stop_three_times_leaks_no_threads() {
    let before = thread_count();
    for round in 0..3 {
        let system = ActorSystem::start("threads").unwrap();
        let mut tree = SupervisorBuilder::new("root", SupervisorSettings::default());
        let a = tree.child(ChildSpec::new("a", |_| Echo));
        let b = tree.child(ChildSpec::new("b", |_| Echo));
        let supervisor = tree.start(&system).await.unwrap();
        assert_eq!(a.send(Ping(round)).await, Ok(round));
        assert_eq!(b.send(Ping(round + 1)).await, Ok(round + 1));
        let during = thread_count();
        assert_eq!(during, before + 4, "system + supervisor + two children");
        supervisor.shutdown().await.unwrap();
        let report = system.stop().await;
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(
            settled_count(before).await,
            before,
            "threads left after round {round}"
        );
    }
    assert_eq!(
        thread_count(),
        before,
        "threads before and after three start/stop cycles"
    );
}

/// The thread count once it equals `expected`, or whatever it is after a short deadline (a
/// joined thread may stay listed in /proc for a moment while the kernel reaps it).
async fn settled_count(expected: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let count = thread_count();
        if count == expected || Instant::now() >= deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
