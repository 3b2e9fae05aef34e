//! CPU cost of the steps a delivery takes besides HTTP and the disk: the receive step
//! (request → record) and the WAL encoding, per delivery; and flush throughput
//! (buffered Arrow rows → sorted, zstd Parquet bytes).
//!
//! ```text
//! cargo bench --bench flush
//! ```

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hookscope::buffer::{Buffer, Derived};
use hookscope::lake::persist;
use hookscope::tables::Table;

#[path = "common/deliveries.rs"]
mod deliveries;

/// `n` realistic deliveries: ~1 KB JSON bodies, slightly out of order in time.
fn buffered(n: usize) -> Vec<arrow::record_batch::RecordBatch> {
    let mut buf = Buffer::default();
    let base = 1_795_000_000_000_000i64;
    for i in 0..n {
        let d = deliveries::realistic(i, base + (i as i64 * 25) - (i as i64 % 7) * 40);
        let derived = Derived {
            attempt: 1,
            is_duplicate: false,
            retry_gap_ms: None,
        };
        buf.push_delivery(i as u64 + 1, &d, derived);
    }
    buf.snapshot(Table::Deliveries)
}

fn flush(c: &mut Criterion) {
    let rows = 50_000;
    let batches = buffered(rows);
    let raw: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    for level in [1, 3] {
        let files = persist::encode(Table::Deliveries, &batches, level).expect("encode");
        let bytes: usize = files.iter().map(|f| f.bytes.len()).sum();
        println!(
            "zstd level {level}: {rows} rows, {:.1} MiB of Arrow buffers -> {:.1} MiB of Parquet ({:.1}x)",
            raw as f64 / (1 << 20) as f64,
            bytes as f64 / (1 << 20) as f64,
            raw as f64 / bytes as f64
        );
    }
    let mut group = c.benchmark_group("flush");
    group.sample_size(10);
    group.throughput(Throughput::Elements(rows as u64));
    for level in [1, 3] {
        group.bench_function(format!("arrow_to_parquet_zstd{level}_{rows}_rows"), |b| {
            b.iter(|| {
                black_box(persist::encode(Table::Deliveries, &batches, level).expect("encode"))
            })
        });
    }
    group.finish();
}

fn receive(c: &mut Criterion) {
    use axum::http::{HeaderMap, HeaderName, HeaderValue};
    use hookscope::config::Config;
    use hookscope::ingest::receive::{BodyRead, Receiver, RequestParts};
    use hookscope::model::Entry;

    let config = Config::from_toml("", "bench", &|_| None).expect("config");
    let receiver = Receiver::new(&config).expect("receiver");
    let body = format!(
        "{{\"id\":\"evt_{:024}\",\"object\":\"event\",\"type\":\"invoice.paid\",\"created\":1795000000,\"data\":{{\"object\":{{\"id\":\"in_1\",\"amount_paid\":1001,\"pad\":\"{}\"}}}}}}",
        7,
        "x".repeat(850)
    );
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:8080"),
        ("content-type", "application/json"),
        (
            "user-agent",
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        ),
        ("content-length", "1024"),
    ] {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let bytes = BodyRead::Complete(bytes::Bytes::from(body));
    let req = RequestParts {
        source: "bench",
        method: "POST",
        path: "/webhook/bench",
        query: "",
        headers: &headers,
        peer: Some("127.0.0.1:5000".parse().expect("addr")),
        received_at_us: 1_795_000_000_000_000,
    };
    let mut group = c.benchmark_group("receive");
    group.bench_function("request_to_record_1kb_json", |b| {
        b.iter(|| black_box(receiver.receive(&req, &bytes)))
    });
    let delivery = receiver.receive(&req, &bytes).delivery;
    group.bench_function("wal_encode_1kb_json", |b| {
        let entry = Entry::Delivery(Box::new(delivery.clone()));
        b.iter(|| black_box(entry.encode()))
    });
    group.finish();
}

criterion_group!(benches, receive, flush);
criterion_main!(benches);
