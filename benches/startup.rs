//! Start-up of a large lake: how long the engine takes to open, the server to be
//! ready and an offline query to answer, with every delivery inside the dedup window
//! (the case that used to rebuild the dedup index from the lake on every start).
//!
//! ```text
//! cargo bench --bench startup                          # 1M deliveries
//! cargo bench --bench startup -- --rows 10000000       # 10M
//! cargo bench --bench startup -- --rows 10000000 --dir /data/startup-lake   # kept, reused
//! ```
//!
//! The lake is filled through the engine itself (the WAL, the buffer, unpaced
//! flushes, the persisted dedup index), as a server would fill it, with distinct
//! ~1 KB deliveries spread over the last six days. A directory given with `--dir` that
//! already holds a lake is reused as it is. Then, in order:
//! 1. `Engine::open` in server mode, three times;
//! 2. `hookscope serve` on the lake, until `/readyz` answers 200, three times;
//! 3. `hookscope query --data-dir` of `SELECT count(*)`, three times;
//! 4. the same open with the persisted dedup state removed from the manifest, as a
//!    lake written before it was persisted is opened (the index is rebuilt from the
//!    lake). This changes the lake: run it last.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hookscope::config::Config;
use hookscope::engine::{Engine, EngineSettings, IngestError, Mode};
use hookscope::model::Delivery;

/// The start-up benchmark's options.
#[derive(clap::Parser)]
#[command(about = "hookscope start-up of a large lake")]
struct Args {
    /// Deliveries to fill the lake with (when it is new).
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Keep (and reuse) the lake here instead of a temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_args() -> Args {
    <Args as clap::Parser>::parse()
}

fn settings(dir: &Path) -> EngineSettings {
    EngineSettings::from_config(&Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    })
}

#[path = "common/deliveries.rs"]
mod deliveries;

/// The `i`-th of `rows` deliveries, spread evenly over the six days before `now_us`.
fn delivery(i: u64, rows: u64, now_us: i64) -> Delivery {
    let span_us = 6 * 86_400_000_000i64;
    deliveries::realistic(
        i as usize,
        now_us - span_us + (span_us / rows as i64) * i as i64,
    )
}

async fn fill(dir: &Path, rows: u64) {
    let mut s = settings(dir);
    s.flush_cpu_share = 1.0;
    let engine = Engine::open(s, Mode::Serve).await.expect("open");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flusher = engine.spawn_flusher(stop_rx);
    let now_us = chrono::Utc::now().timestamp_micros();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..512)
        .map(|_| {
            let engine = Arc::clone(&engine);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= rows {
                        return;
                    }
                    if i.is_multiple_of(1_000_000) && i > 0 {
                        eprintln!(
                            "  {i} deliveries in {:.0} s",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    loop {
                        match engine.ingest(delivery(i, rows, now_us)).await {
                            Ok(_) => break,
                            Err(IngestError::Overloaded { .. }) => {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(e) => panic!("ingest failed: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("ingest task");
    }
    let _ = stop_tx.send(true);
    let _ = flusher.await;
    engine.shutdown().await.expect("final flush");
    eprintln!(
        "filled {rows} deliveries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn time_open(dir: &Path) -> f64 {
    let started = Instant::now();
    let engine = Engine::open(settings(dir), Mode::Serve)
        .await
        .expect("open");
    let took = started.elapsed().as_secs_f64();
    engine.shutdown().await.expect("shutdown");
    took
}

/// `hookscope serve` on the lake: seconds until `/readyz` answers 200.
async fn time_serve(dir: &Path) -> f64 {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookscope"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("HOOKSCOPE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start hookscope");
    let stdout = child.stdout.take().expect("stdout");
    let line = BufReader::new(stdout)
        .lines()
        .next()
        .expect("a first line")
        .expect("stdout");
    let url = line
        .strip_prefix("hookscope listening on ")
        .expect("the listening line")
        .to_string();
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed().as_secs_f64();
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    took
}

/// `hookscope query --data-dir` of a count: seconds, and the count.
fn time_query(dir: &Path) -> (f64, String) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_hookscope"))
        .args(["query", "--format", "csv", "--data-dir"])
        .arg(dir)
        .arg("SELECT count(*) AS n FROM deliveries")
        .output()
        .expect("run hookscope query");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    (
        started.elapsed().as_secs_f64(),
        text.lines().nth(1).unwrap_or("?").to_string(),
    )
}

/// Writes a newer manifest version without the persisted dedup state.
fn drop_dedup_state(dir: &Path) {
    let manifests = dir.join("_manifest");
    let newest = std::fs::read_dir(&manifests)
        .expect("_manifest")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .max()
        .expect("a manifest");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&newest).expect("read")).expect("json");
    let version = m["version"].as_u64().expect("version") + 1;
    m["version"] = version.into();
    m.as_object_mut().expect("object").remove("dedup");
    std::fs::write(
        manifests.join(format!("{version:020}.json")),
        serde_json::to_vec(&m).expect("json"),
    )
    .expect("write");
}

#[path = "common/lake_dir.rs"]
mod lake_dir;

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_tmp, dir) = lake_dir::lake_dir(args.dir.as_ref());
    rt.block_on(async {
        if !dir.join("_manifest").exists() {
            eprintln!("filling {} with {} deliveries", dir.display(), args.rows);
            fill(&dir, args.rows).await;
        }
        let bytes: u64 = walk_bytes(&dir);
        println!("lake {} ({:.1} GiB on disk)", dir.display(), bytes as f64 / (1u64 << 30) as f64);
        let mut opens = Vec::new();
        for _ in 0..3 {
            opens.push(time_open(&dir).await);
        }
        let mut serves = Vec::new();
        for _ in 0..3 {
            serves.push(time_serve(&dir).await);
        }
        let mut queries = Vec::new();
        let mut count = String::new();
        for _ in 0..3 {
            let (t, n) = time_query(&dir);
            queries.push(t);
            count = n;
        }
        println!("| step | runs (s) | median (s) |");
        println!("|---|---|---|");
        for (name, runs) in [
            ("Engine::open (server mode)", &opens),
            ("`hookscope serve` until /readyz is 200", &serves),
            ("`hookscope query --data-dir` count(*)", &queries),
        ] {
            let list: Vec<String> = runs.iter().map(|t| format!("{t:.3}")).collect();
            println!("| {name} | {} | **{:.3}** |", list.join(", "), median(runs.clone()));
        }
        println!("(count(*) = {count})");
        drop_dedup_state(&dir);
        let rebuilt = time_open(&dir).await;
        println!(
            "| Engine::open of the same lake without the persisted dedup state (rebuilt from the lake) | {rebuilt:.3} | |"
        );
    });
}

fn walk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
