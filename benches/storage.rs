//! Criterion benchmarks of the fallback keyspace: the speed calls run at while Redis is down.
//! (Redis-backed throughput is `botfleet bench storage`, beside redis-benchmark.)

use botfleet::storage::{glob_match, Expiry, Keyspace, Op};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn keyspace(c: &mut Criterion) {
    let mut ks = Keyspace::new();
    for i in 0..10_000 {
        let op = Op::Set {
            key: format!("k{i}"),
            value: "x".repeat(100),
            expiry: Expiry::Never,
            only_if_absent: false,
        };
        ks.apply(&op, 0).unwrap();
    }
    let get = Op::Get {
        key: "k5000".into(),
    };
    c.bench_function("fallback get", |b| {
        b.iter(|| ks.apply(black_box(&get), 0).unwrap())
    });
    let set = Op::Set {
        key: "k1".into(),
        value: "y".repeat(100),
        expiry: Expiry::In(60_000),
        only_if_absent: false,
    };
    c.bench_function("fallback set with ttl", |b| {
        b.iter(|| ks.apply(black_box(&set), 0).unwrap())
    });
    let mut n = 0u64;
    c.bench_function("fallback zadd + zpopmin", |b| {
        b.iter(|| {
            n += 1;
            let add = Op::ZAdd {
                key: "q".into(),
                members: vec![(-(n as f64 % 10.0), format!("t{n}"))],
            };
            ks.apply(&add, 0).unwrap();
            ks.apply(
                &Op::ZPopMin {
                    key: "q".into(),
                    count: 1,
                },
                0,
            )
            .unwrap()
        })
    });
    c.bench_function("glob match", |b| {
        b.iter(|| {
            glob_match(
                black_box("identity:room?:*"),
                black_box("identity:room1:participant-42"),
            )
        })
    });
}

criterion_group!(benches, keyspace);
criterion_main!(benches);
