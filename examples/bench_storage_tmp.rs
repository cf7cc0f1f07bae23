#[tokio::main]
async fn main() {
    let url = std::env::args().nth(1).unwrap();
    let b = botfleet::bench::storage::StorageBench {
        redis_url: url,
        ops: 100_000,
        outbox_writes: 10_000,
    };
    botfleet::bench::storage::run(&b, |v| println!("{v}"))
        .await
        .unwrap();
}
