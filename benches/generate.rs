//! How fast the traffic generator fills a lake (the data behind the analytics
//! benchmarks), and how small the lake is per delivery.
//!
//! ```text
//! cargo bench --bench generate                                   # 1M deliveries over 30 days
//! cargo bench --bench generate -- --rows 10000000 --days 30
//! cargo bench --bench generate -- --rows 1000000 --flush-every 10s   # files as ingest leaves them
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hookscope::generate::{Spec, generate};

/// The generator benchmark's options.
#[derive(clap::Parser)]
#[command(about = "hookscope: generated traffic written into a lake")]
struct Args {
    /// Deliveries to generate.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Days the traffic spans (ending now).
    #[arg(long, default_value_t = 30)]
    days: u64,
    /// One file per partition and window of this length (e.g. 10s), as ingest
    /// flushing at that interval leaves a lake; default one per hour.
    #[arg(long, value_parser = humantime::parse_duration)]
    flush_every: Option<Duration>,
    /// Mean body bytes (each source's sizes are lognormal around its own median).
    #[arg(long, default_value_t = 1024)]
    body_bytes: u32,
    /// Keep the lake here instead of a temporary directory (must not hold one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

#[path = "common/lake_dir.rs"]
mod lake_dir;

fn main() {
    let args = <Args as clap::Parser>::parse();
    let (_tmp, dir) = lake_dir::lake_dir(args.dir.as_ref());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let spec = Spec {
            deliveries: args.rows,
            end_us: chrono::Utc::now().timestamp_micros(),
            span: Duration::from_secs(args.days * 86_400),
            seed: 1,
            flush_every: args.flush_every,
            zstd_level: 1,
            mean_body_bytes: args.body_bytes,
        };
        let started = Instant::now();
        let last = AtomicU64::new(0);
        let progress = move |n: u64| {
            if n >= last.load(Ordering::Relaxed) + 1_000_000 {
                last.store(n, Ordering::Relaxed);
                eprintln!("  {n} deliveries, {:.1} s", started.elapsed().as_secs_f64());
            }
        };
        let s = generate(&dir, &spec, progress).await.expect("generate");
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{} deliveries ({} retries, {} duplicates) and {} outcomes over {} days in {secs:.1} s: {:.0} deliveries/s",
            s.deliveries,
            s.retries,
            s.duplicates,
            s.outcomes,
            args.days,
            s.deliveries as f64 / secs
        );
        println!(
            "{} files, {:.1} MiB: {:.0} bytes per delivery (outcomes included) for {:.0} request bytes (body + headers): 1/{:.1}",
            s.files,
            s.bytes as f64 / (1 << 20) as f64,
            s.bytes as f64 / s.deliveries as f64,
            s.request_bytes as f64 / s.deliveries as f64,
            s.request_bytes as f64 / s.bytes as f64
        );
    });
}
