//! Embedding botfleet in a host application with its own tokio runtime.
//!
//! The host starts a fleet with an actor of its own under botfleet's supervision, uses the
//! storage handle, crashes its actor on purpose to show that the handle it holds keeps
//! working after the restart, prints the fleet's health and shuts down.
//!
//! ```sh
//! cargo run --example embed                                  # in-memory store
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example embed # with Redis
//! ```

use std::time::Duration;

use actix::prelude::*;
use botfleet::supervisor::{ActorHandle, CallError, ChildSpec};
use botfleet::{Fleet, Settings};

/// The host's own actor: counts greetings.
#[derive(Default)]
struct Greeter {
    greeted: u64,
}

impl Actor for Greeter {
    type Context = Context<Self>;
}

/// Greets someone; `crash` makes the handler panic.
#[derive(Message)]
#[rtype(result = "String")]
struct Greet {
    name: String,
    crash: bool,
}

impl Handler<Greet> for Greeter {
    type Result = String;

    fn handle(&mut self, msg: Greet, _: &mut Context<Self>) -> String {
        if msg.crash {
            panic!("the greeter tripped over {}", msg.name);
        }
        self.greeted += 1;
        format!("hello {} (greeting #{})", msg.name, self.greeted)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut settings = Settings::load(None)?;
    if std::env::var("REDIS_URL").is_err() {
        // No Redis named: run on the in-memory store alone.
        settings.storage.redis.enabled = false;
    }

    let mut greeter: Option<ActorHandle<Greeter>> = None;
    let fleet = Fleet::start_with(settings, |tree, _storage| {
        greeter = Some(tree.child(ChildSpec::new("greeter", |_| Greeter::default())));
    })
    .await?;
    let greeter = greeter.expect("configure ran");
    println!(
        "fleet {} started, storage {}",
        fleet.instance(),
        fleet.storage().mode()
    );

    fleet
        .storage()
        .set("embed:greeting", "hello", Some(Duration::from_secs(60)))
        .await?;
    println!("stored: {:?}", fleet.storage().get("embed:greeting").await?);

    println!(
        "{}",
        greeter
            .send(Greet {
                name: "ada".into(),
                crash: false
            })
            .await?
    );
    match greeter
        .send(Greet {
            name: "bob".into(),
            crash: true,
        })
        .await
    {
        Err(CallError::ActorRestarted { .. }) => {
            println!("the greeter crashed; it is being restarted")
        }
        other => println!("unexpected: {other:?}"),
    }
    // The same handle reaches the new incarnation (fresh state) once it is up.
    let reply = loop {
        match greeter
            .send(Greet {
                name: "cy".into(),
                crash: false,
            })
            .await
        {
            Ok(reply) => break reply,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    println!("{reply}");

    println!("{}", serde_json::to_string_pretty(&fleet.health())?);
    let report = fleet.shutdown().await?;
    println!(
        "stopped in order {:?}, flushed: {}",
        report.actors.stop_order(),
        report.flushed
    );
    Ok(())
}
