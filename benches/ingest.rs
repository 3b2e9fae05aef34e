//! Ingest load test: hookscope (durable mode) against a null axum server that stores
//! nothing, in one run on one machine.
//!
//! ```text
//! cargo bench --bench ingest                       # defaults below
//! cargo bench --bench ingest -- --seconds 20 --connections 64 --body 1024
//! cargo bench --bench ingest -- --signed           # Stripe-signed bodies, verified
//! cargo bench --bench ingest -- --sync none        # hookscope with [wal] sync = "none"
//! cargo bench --bench ingest -- --open-only --rate 17000   # open loop only
//! cargo bench --bench ingest -- --arrivals uniform  # open loop evenly spaced, not Poisson
//! cargo bench --bench ingest -- --forward          # forwarding overhead vs a direct call
//! cargo bench --bench ingest -- --ab HOOKSCOPE_WAL_COMMIT_DELAY=1ms   # paired A/B
//! ```
//!
//! With `--ab KEY=VALUE` (repeatable) a second hookscope runs with those environment
//! variables and is measured in the same alternating rounds, so a setting can be
//! compared on a noisy machine; `INGEST_BENCH_VARIANT=PATH` makes the variant another
//! build, and `INGEST_BENCH_HOOKSCOPE=PATH` replaces the main one. Odd rounds run the
//! variant first: whichever server ran second in a round measured 6–12% faster, so a
//! comparison in one order only was biased.
//!
//! With `--forward`, the null server plays the app: the same requests go directly to
//! it and through a hookscope source whose `forward_to` is the app, and the latency
//! percentiles of both are compared.
//!
//! Phases, per target: closed loop (each of `--connections` connections sends its next
//! request as soon as the answer arrives) for throughput; then, for hookscope, an open
//! loop at half the closed-loop rate for acknowledgement latency, measured from each
//! request's scheduled send time (no coordinated omission), repeated `--rounds` times.
//! hookscope's resident memory is sampled throughout.
//!
//! Each phase also reports the machine's "host steal": the share of CPU time the
//! hypervisor gave to other tenants (from `/proc/stat`). On a shared VM it comes and
//! goes by the minute and can halve a phase's rate, so besides the medians over all
//! rounds the summary gives the medians over quiet rounds (steal ≤ 5% in every phase
//! that counts), and every round's numbers are printed.
//!
//! The load generator speaks HTTP/1.1 over keep-alive TCP with pre-built requests, so
//! it spends as little of the machine's CPU as it can; it runs on the same cores as
//! the server, for both targets alike. The closed loop runs on a one-worker Tokio
//! runtime; the open loop on one thread of its own with `epoll` and a `timerfd`
//! (`ingest/paced.rs`), which both paces and sends.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "ingest/paced.rs"]
mod paced;

const STRIPE_SECRET: &str = "whsec_benchmark_secret_0123456789";

/// The ingest benchmark's options (see the file's docs).
#[derive(clap::Parser)]
#[command(about = "hookscope ingest load test against a null server")]
struct Args {
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds (null, hookscope and the variant each run once per round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Keep-alive connections of the closed loop.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Body bytes per request.
    #[arg(long, default_value_t = 1024)]
    body: usize,
    /// Stripe-signed bodies, verified by a configured source.
    #[arg(long)]
    signed: bool,
    /// Forwarding overhead against calling the app directly.
    #[arg(long)]
    forward: bool,
    /// Skip the closed loops (needs --rate).
    #[arg(long, requires = "rate")]
    open_only: bool,
    /// Open-loop arrivals.
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    arrivals: Arrivals,
    /// hookscope's `[wal] sync`.
    #[arg(long, default_value = "always")]
    sync: String,
    /// Open-loop rate (default: half the closed loop's).
    #[arg(long)]
    rate: Option<u64>,
    /// KEY=VALUE (repeatable): a second hookscope with these environment variables,
    /// measured in the same rounds (paired A/B comparison).
    #[arg(long, value_parser = key_value)]
    ab: Vec<(String, String)>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Arrivals {
    /// As from many independent senders.
    Poisson,
    /// Evenly spaced.
    Uniform,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, not {s:?}"))
}

fn parse_args() -> Args {
    <Args as clap::Parser>::parse()
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--null-server") {
        null_server();
        return;
    }
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(args));
}

/// The baseline: reads each body, answers like hookscope, stores nothing.
fn null_server() {
    use axum::Router;
    use axum::routing::post;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = Router::new().route(
            "/webhook/{source}",
            post(|body: bytes::Bytes| async move {
                let id = ulid::Ulid::new().to_string();
                let _ = body.len();
                (
                    [("content-type", "application/json")],
                    format!("{{\"duplicate\":false,\"id\":\"{id}\"}}"),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!(
            "null listening on http://{}",
            listener.local_addr().expect("addr")
        );
        axum::serve(listener, app).await.expect("serve");
    });
}

struct Target {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Target {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn spawn(name: &'static str, mut cmd: Command) -> Target {
    // INGEST_BENCH_SERVER_LOG=FILE keeps hookscope's log (e.g. with HOOKSCOPE_LOG=debug).
    let stderr = match std::env::var("INGEST_BENCH_SERVER_LOG") {
        Ok(path) if name == "hookscope" => {
            Stdio::from(std::fs::File::create(path).expect("log file"))
        }
        _ => Stdio::null(),
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("url")
        .trim_start_matches("http://")
        .to_string();
    Target {
        child,
        addr: url.parse().expect("addr"),
    }
}

/// A pool of distinct ~`size`-byte JSON requests (distinct bodies: realistic dedup).
fn requests(addr: SocketAddr, path: &str, size: usize, signed: bool, n: usize) -> Vec<Vec<u8>> {
    let now = chrono::Utc::now().timestamp();
    (0..n)
        .map(|i| {
            let prefix = format!(
                "{{\"id\":\"evt_{i:024}\",\"object\":\"event\",\"type\":\"invoice.paid\",\"created\":{now},\"data\":{{\"object\":{{\"id\":\"in_{i}\",\"amount_paid\":{},\"pad\":\"",
                1000 + i
            );
            let pad = size.saturating_sub(prefix.len() + 4);
            let body = format!("{prefix}{}\"}}}}}}", "x".repeat(pad));
            let mut head = format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nUser-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\nContent-Length: {}\r\n",
                body.len()
            );
            if signed {
                let mut mac = Hmac::<Sha256>::new_from_slice(STRIPE_SECRET.as_bytes()).expect("key");
                mac.update(format!("{now}.{body}").as_bytes());
                let sig = hex::encode(mac.finalize().into_bytes());
                head.push_str(&format!("Stripe-Signature: t={now},v1={sig}\r\n"));
            }
            head.push_str("\r\n");
            let mut req = head.into_bytes();
            req.extend_from_slice(body.as_bytes());
            req
        })
        .collect()
}

/// Sends one request and reads one response; returns the status.
async fn exchange(conn: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> std::io::Result<u16> {
    conn.write_all(req).await?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((status, len)) = response_len(buf) {
            while buf.len() < len {
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
    }
}

/// Once `buf` holds a response's head: its status and the response's whole length
/// (head and `Content-Length` body).
fn response_len(buf: &[u8]) -> Option<(u16, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    Some((status, end + 4 + len))
}

struct Outcome {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    /// Microseconds, from scheduled (open loop) or actual (closed loop) send time.
    latencies: Vec<u32>,
    /// Open loop: (milliseconds since start, latency µs) of every request, for
    /// timelines.
    timeline: Vec<(u32, u32)>,
    /// Open loop: how late (µs) the load generator sent a request that found an idle
    /// connection when it fell due (the generator's wake-up). Part of every measured
    /// latency, but the generator's, not the server's.
    wake_late: Vec<u32>,
}

/// Closed loop for `seconds`: each connection sends its next request as soon as the
/// answer to the last one arrives. (The open loop is [`paced::run`].)
async fn load(
    addr: SocketAddr,
    reqs: Arc<Vec<Vec<u8>>>,
    connections: usize,
    seconds: u64,
) -> Outcome {
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (reqs, next, stop) = (Arc::clone(&reqs), Arc::clone(&next), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut conn = TcpStream::connect(addr).await.expect("connect");
            conn.set_nodelay(true).expect("nodelay");
            let mut buf = Vec::with_capacity(1024);
            let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::with_capacity(1 << 16));
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let req = &reqs[(k as usize) % reqs.len()];
                match exchange(&mut conn, req, &mut buf).await {
                    Ok(200) => {
                        ok += 1;
                        lat.push(paced::micros(sent.elapsed()));
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        conn = TcpStream::connect(addr).await.expect("reconnect");
                    }
                }
            }
            (ok, errors, lat)
        }));
    }
    let mut out = Outcome {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        timeline: Vec::new(),
        wake_late: Vec::new(),
    };
    for t in tasks {
        let (ok, errors, lat) = t.await.expect("task");
        out.ok += ok;
        out.errors += errors;
        out.latencies.extend(lat);
    }
    stop.store(true, Ordering::Relaxed);
    out.elapsed = start.elapsed().min(Duration::from_secs(seconds));
    out.latencies.sort_unstable();
    out
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0)
}

/// The machine's CPU time so far, from the first line of `/proc/stat`, in ticks.
#[derive(Clone, Copy, Default)]
struct HostTicks {
    /// Given by the hypervisor to other tenants.
    steal: u64,
    /// Idle, including waiting for I/O.
    idle: u64,
    total: u64,
}

/// All zero where there is no `/proc/stat`.
fn host_ticks() -> HostTicks {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let f: Vec<u64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest time is in user).
            Some(HostTicks {
                steal: *f.get(7)?,
                idle: f.get(3)? + f.get(4)?,
                total: f.iter().take(8).sum(),
            })
        })
        .unwrap_or_default()
}

/// Bytes written to the machine's block devices so far (`/sys/block/*/stat`, loop and
/// zram devices left out); zero where there is no such file.
fn disk_written_bytes() -> u64 {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|d| {
            let name = d.file_name();
            let name = name.to_string_lossy();
            !name.starts_with("loop") && !name.starts_with("zram")
        })
        .filter_map(|d| std::fs::read_to_string(d.path().join("stat")).ok())
        // Field 7: sectors written, 512 bytes each.
        .filter_map(|stat| stat.split_whitespace().nth(6)?.parse::<u64>().ok())
        .map(|sectors| sectors * 512)
        .sum()
}

/// Share of the machine's CPU time between two readings that `part` picks, in percent.
fn host_pct(before: HostTicks, after: HostTicks, part: fn(HostTicks) -> u64) -> f64 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    100.0 * part(after).saturating_sub(part(before)) as f64 / total as f64
}

/// Share of the machine's CPU time the hypervisor gave to other tenants ("steal")
/// between two `host_ticks` readings, in percent.
fn steal_pct(before: HostTicks, after: HostTicks) -> f64 {
    host_pct(before, after, |t| t.steal)
}

/// Rounds where the hypervisor took at most this share of the CPU count as quiet.
const QUIET_STEAL_PCT: f64 = 5.0;

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Samples a process's RSS and the host's steal time every 100 ms until finished;
/// reports the maximum RSS and the steal (ms, both CPUs together) per 100 ms since
/// the start.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(f64, Vec<(u32, u64)>)>,
}

/// `/proc/stat` counts in USER_HZ ticks, 100 per second on Linux.
const MS_PER_TICK: u64 = 10;

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut max: f64 = 0.0;
            let mut steal = Vec::new();
            let start = Instant::now();
            let mut last = host_ticks();
            while !s.load(Ordering::Relaxed) {
                max = max.max(rss_mib(pid));
                std::thread::sleep(Duration::from_millis(100));
                let now = host_ticks();
                let stolen = now.steal.saturating_sub(last.steal) * MS_PER_TICK;
                if stolen > 0 {
                    steal.push((start.elapsed().as_millis() as u32, stolen));
                }
                last = now;
            }
            (max, steal)
        });
        Self { stop, handle }
    }
    /// The maximum RSS (MiB) and the steal samples.
    fn finish_with_steal(self) -> (f64, Vec<(u32, u64)>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
    fn finish(self) -> f64 {
        self.finish_with_steal().0
    }
}

async fn run(args: Args) {
    let dir = tempfile::tempdir().expect("tempdir");
    // INGEST_BENCH_HOOKSCOPE=PATH measures another build (A/B comparisons).
    let hookscope_bin = std::env::var("INGEST_BENCH_HOOKSCOPE")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hookscope").to_string());
    let null = {
        let mut cmd = Command::new(std::env::current_exe().expect("exe"));
        cmd.arg("--null-server");
        spawn("null axum", cmd)
    };
    let mut config = format!("[wal]\nsync = \"{}\"\n", args.sync);
    if args.forward {
        config.push_str(&format!(
            "[[sources]]\nname = \"app\"\nforward_to = \"http://{}/webhook/app\"\n",
            null.addr
        ));
    }
    // With --signed, a second source verifies Stripe signatures; it is measured in the
    // same rounds as the unsigned one, against the same server.
    config.push_str(&format!(
        "[[sources]]\nname = \"signed\"\nprovider = \"stripe\"\nsecret = \"{STRIPE_SECRET}\"\nrequire_signature = true\n"
    ));
    std::fs::write(dir.path().join("hookscope.toml"), config).expect("config");

    let hookscope_cmd = |bin: &str, data_dir: &str| {
        let mut cmd = Command::new(bin);
        cmd.current_dir(dir.path())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data_dir,
                "--config",
                "hookscope.toml",
            ])
            .env(
                "HOOKSCOPE_LOG",
                std::env::var("HOOKSCOPE_LOG").unwrap_or_else(|_| "warn".into()),
            );
        cmd
    };
    let hookscope = spawn("hookscope", hookscope_cmd(&hookscope_bin, "lake"));
    // INGEST_BENCH_VARIANT=PATH: the variant is another build (with or without --ab).
    let variant_bin = std::env::var("INGEST_BENCH_VARIANT").ok();
    let variant = (!args.ab.is_empty() || variant_bin.is_some()).then(|| {
        let mut cmd = hookscope_cmd(variant_bin.as_deref().unwrap_or(&hookscope_bin), "lake-b");
        cmd.envs(args.ab.iter().map(|(k, v)| (k, v)));
        spawn("variant", cmd)
    });
    let variant_name = args
        .ab
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain(variant_bin.iter().map(|b| format!("build {b}")))
        .collect::<Vec<_>>()
        .join(" ");

    if args.forward {
        forward_overhead(&args, &null, &hookscope).await;
        return;
    }
    println!(
        "ingest benchmark: {} s per phase, {} connections, {}-byte JSON bodies, signed: {}, wal sync: {}, open-loop arrivals: {}",
        args.seconds,
        args.connections,
        args.body,
        args.signed,
        args.sync,
        if args.arrivals == Arrivals::Poisson {
            "poisson"
        } else {
            "uniform"
        }
    );
    let hookscope_rate = if args.open_only {
        // Warm up (connections, allocator, page cache) as the closed loop would.
        for target in std::iter::once(&hookscope).chain(variant.as_ref()) {
            let reqs = unsigned_requests(target, args.body);
            load(target.addr, reqs, args.connections, 2).await;
        }
        0.0
    } else {
        closed_loops(&args, &null, &hookscope, variant.as_ref(), &variant_name).await
    };
    let rate = args.rate.unwrap_or((hookscope_rate / 2.0) as u64).max(1);
    let mut p99s = Vec::new();
    let mut quiet_p99s = Vec::new();
    for round in 0..args.rounds {
        let variant_first = round % 2 == 1;
        if let Some(v) = variant.as_ref().filter(|_| variant_first) {
            open_loop(&format!("round {round} variant"), v, rate, &args).await;
        }
        let (p99, steal) =
            open_loop(&format!("round {round} hookscope"), &hookscope, rate, &args).await;
        p99s.push(p99);
        if steal <= QUIET_STEAL_PCT {
            quiet_p99s.push(p99);
        }
        if let Some(v) = variant.as_ref().filter(|_| !variant_first) {
            open_loop(&format!("round {round} variant"), v, rate, &args).await;
        }
    }
    let quiet_rounds = quiet_p99s.len();
    let quiet = if quiet_p99s.is_empty() {
        "none".to_string()
    } else {
        format!(
            "{quiet_rounds} of {}, median p99 {:.2} ms",
            args.rounds,
            median(&mut quiet_p99s)
        )
    };
    println!(
        "  open loop at {rate} req/s: median p99 {:.2} ms; quiet rounds (host steal ≤ {QUIET_STEAL_PCT}%): {quiet}",
        median(&mut p99s)
    );
    println!(
        "  (open-loop latency is measured from each request's scheduled send time, so it includes the load generator's own lateness)"
    );
    disk_probe(dir.path());
}

/// The median of `v` (sorts it).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The closed-loop phases, round by round; prints each and the medians, and returns
/// hookscope's median rate.
async fn closed_loops(
    args: &Args,
    null: &Target,
    hookscope: &Target,
    variant: Option<&Target>,
    variant_name: &str,
) -> f64 {
    // Closed loop, alternating targets round by round so that noise from other
    // tenants of the machine falls on all alike; medians are reported.
    let mut phases: Vec<(&str, &Target, &str, bool)> = vec![
        ("null axum", null, "/webhook/bench", false),
        ("hookscope", hookscope, "/webhook/bench", false),
    ];
    if args.signed {
        phases.push(("hs signed", hookscope, "/webhook/signed", true));
    }
    if let Some(v) = &variant {
        phases.push(("variant", v, "/webhook/bench", false));
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); phases.len()];
    let mut cpu_us: Vec<Vec<f64>> = vec![Vec::new(); phases.len()];
    let mut steals: Vec<Vec<f64>> = vec![Vec::new(); phases.len()];
    if variant.is_some() {
        println!(
            "  (odd rounds run the variant before hookscope: whichever server runs second in a round has measured 6-12% faster)"
        );
    }
    for round in 0..args.rounds {
        let mut order: Vec<usize> = (0..phases.len()).collect();
        if variant.is_some() && round % 2 == 1 {
            order.swap(1, phases.len() - 1);
        }
        for &t in &order {
            let (name, target, path, signed) = &phases[t];
            let reqs = Arc::new(requests(target.addr, path, args.body, *signed, 20_000));
            if round == 0 {
                // Warm up: connections, allocator, page cache.
                load(target.addr, Arc::clone(&reqs), args.connections, 2).await;
            }
            let sampler = RssSampler::start(target.child.id());
            let wal_before = wal_counters(target.addr).await;
            let cpu_before = cpu_seconds(target.child.id());
            let loadgen_before = cpu_seconds(std::process::id());
            let host_before = host_ticks();
            let out = load(target.addr, reqs, args.connections, args.seconds).await;
            let host_after = host_ticks();
            let steal = steal_pct(host_before, host_after);
            let idle = host_pct(host_before, host_after, |t| t.idle);
            let loadgen = cpu_seconds(std::process::id()) - loadgen_before;
            let cpu = cpu_seconds(target.child.id()) - cpu_before;
            let wal_after = wal_counters(target.addr).await;
            let rss = sampler.finish();
            let rate = out.ok as f64 / out.elapsed.as_secs_f64();
            let per_req = 1e6 * cpu / out.ok.max(1) as f64;
            println!(
                "  round {round} {name:<10} closed loop: {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  server CPU {:>5.1} µs/req  errors {}  max RSS {:.0} MiB  host steal {steal:.1}%",
                rate,
                pct(&out.latencies, 0.50),
                pct(&out.latencies, 0.99),
                per_req,
                out.errors,
                rss
            );
            // Idle CPU in a closed loop means the rate is bound by latency (the WAL's
            // group commits), not by CPU.
            println!(
                "             load generator CPU {:.1} µs/req, machine idle {idle:.1}%",
                1e6 * loadgen / out.ok.max(1) as f64
            );
            if t > 0 {
                println!("             {}", wal_report(wal_before, wal_after));
            }
            rates[t].push(rate);
            cpu_us[t].push(per_req);
            steals[t].push(steal);
        }
    }
    // Per-round rates, in round order (before the medians sort them).
    let (null_rates, hookscope_rates) = (rates[0].clone(), rates[1].clone());
    let variant_rates = variant.as_ref().map(|_| rates[phases.len() - 1].clone());
    let rate_m: Vec<f64> = rates.iter_mut().map(|v| median(v)).collect();
    let cpu_m: Vec<f64> = cpu_us.iter_mut().map(|v| median(v)).collect();
    let (ceiling, hookscope_rate) = (rate_m[0], rate_m[1]);
    println!(
        "  median: null {ceiling:.0} req/s ({:.1} µs CPU/req), hookscope {hookscope_rate:.0} req/s ({:.1} µs CPU/req): {:.1}% of the ceiling",
        cpu_m[0],
        cpu_m[1],
        100.0 * hookscope_rate / ceiling
    );
    // The same ratio over the rounds in which neither phase lost more than
    // QUIET_STEAL_PCT of the machine to other tenants: on a shared VM, steal comes and
    // goes by the minute and falls unevenly on the phases of one round.
    let quiet: Vec<f64> = (0..args.rounds)
        .filter(|&r| steals[0][r] <= QUIET_STEAL_PCT && steals[1][r] <= QUIET_STEAL_PCT)
        .map(|r| 100.0 * hookscope_rates[r] / null_rates[r])
        .collect();
    let all: Vec<String> = (0..args.rounds)
        .map(|r| format!("{:.1}%", 100.0 * hookscope_rates[r] / null_rates[r]))
        .collect();
    println!("  per round: hookscope / null = {}", all.join(", "));
    if quiet.is_empty() {
        println!("  quiet rounds (host steal ≤ {QUIET_STEAL_PCT}% in both phases): none");
    } else {
        let mut q = quiet.clone();
        println!(
            "  quiet rounds (host steal ≤ {QUIET_STEAL_PCT}% in both phases): {} of {}, median {:.1}% of the ceiling",
            quiet.len(),
            args.rounds,
            median(&mut q)
        );
    }
    if args.signed {
        println!(
            "  median: Stripe-signed {:.0} req/s ({:.1} µs CPU/req): {:.1}% of the unsigned rate, {:+.1} µs CPU/req",
            rate_m[2],
            cpu_m[2],
            100.0 * rate_m[2] / hookscope_rate,
            cpu_m[2] - cpu_m[1]
        );
    }
    if let Some(v) = variant.as_ref().map(|_| phases.len() - 1) {
        println!(
            "  median: variant ({variant_name}) {:.0} req/s ({:.1} µs CPU/req): {:.1}% of the ceiling, {:.1}% of hookscope's rate",
            rate_m[v],
            cpu_m[v],
            100.0 * rate_m[v] / ceiling,
            100.0 * rate_m[v] / hookscope_rate
        );
    }
    if let Some(vr) = &variant_rates {
        let ratios: Vec<String> = vr
            .iter()
            .zip(&hookscope_rates)
            .enumerate()
            .map(|(round, (v, h))| {
                let first = if round % 2 == 1 {
                    " (variant first)"
                } else {
                    ""
                };
                format!("{:.1}%{first}", 100.0 * v / h)
            })
            .collect();
        println!("  per round: variant / hookscope = {}", ratios.join(", "));
    }
    hookscope_rate
}

/// The disk's own sync latency, with no server running: 16 KiB `pwrite` + `fdatasync`
/// back to back for 5 s into a file whose blocks are already written (as a recycled
/// WAL segment), on the filesystem the lakes were on. Every acknowledgement waits for
/// one such sync, so its stalls are a floor under the open loop's tail latency.
fn disk_probe(dir: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    const FILE: u64 = 64 << 20;
    const WRITE: usize = 16 << 10;
    let path = dir.join("disk-probe.bin");
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            println!("  disk alone: cannot create {}: {e}", path.display());
            return;
        }
    };
    let zeros = vec![0u8; 1 << 20];
    let ready = (0..FILE / (1 << 20))
        .try_for_each(|i| file.write_all_at(&zeros, i << 20))
        .and_then(|_| file.sync_all());
    if let Err(e) = ready {
        println!("  disk alone: cannot prepare {}: {e}", path.display());
        return;
    }
    let data = vec![7u8; WRITE];
    let mut lat_us: Vec<u32> = Vec::new();
    let steal_before = host_ticks();
    let start = Instant::now();
    let mut offset = 0;
    while start.elapsed() < Duration::from_secs(5) {
        let t = Instant::now();
        if file
            .write_all_at(&data, offset)
            .and_then(|_| file.sync_data())
            .is_err()
        {
            println!("  disk alone: write or sync failed");
            return;
        }
        lat_us.push(paced::micros(t.elapsed()));
        offset = (offset + WRITE as u64) % FILE;
    }
    lat_us.sort_unstable();
    let secs = start.elapsed().as_secs_f64();
    let steal = steal_pct(steal_before, host_ticks());
    let _ = std::fs::remove_file(&path);
    let slow = lat_us.iter().filter(|&&us| us > 5_000).count();
    println!(
        "  disk alone (16 KiB pwrite + fdatasync, back to back): {:.0} syncs/s  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  over 5 ms: {slow} ({:.1}/s)  host steal {steal:.1}%",
        lat_us.len() as f64 / secs,
        pct(&lat_us, 0.5),
        pct(&lat_us, 0.99),
        pct(&lat_us, 0.999),
        pct(&lat_us, 1.0),
        slow as f64 / secs,
    );
}

/// The open loop's requests: unsigned, to the `bench` source.
fn unsigned_requests(target: &Target, body: usize) -> Arc<Vec<Vec<u8>>> {
    Arc::new(requests(target.addr, "/webhook/bench", body, false, 20_000))
}

/// Acknowledgement latency at a fixed request rate (open loop). Returns the p99 (ms)
/// and the host's steal during the phase (percent).
async fn open_loop(name: &str, target: &Target, rate: u64, args: &Args) -> (f64, f64) {
    let reqs = unsigned_requests(target, args.body);
    let sampler = RssSampler::start(target.child.id());
    let wal_before = wal_counters(target.addr).await;
    let open_started = chrono::Utc::now();
    let host_before = host_ticks();
    let cpu_before = cpu_seconds(target.child.id());
    let loadgen_before = cpu_seconds(std::process::id());
    let disk_before = disk_written_bytes();
    let (addr, connections, seconds, poisson) = (
        target.addr,
        args.connections,
        args.seconds,
        args.arrivals == Arrivals::Poisson,
    );
    let out = tokio::task::spawn_blocking(move || {
        paced::run(addr, &reqs, connections, seconds, rate, poisson)
    })
    .await
    .expect("open loop");
    let host_after = host_ticks();
    let disk = disk_written_bytes().saturating_sub(disk_before);
    let cpu = cpu_seconds(target.child.id()) - cpu_before;
    let loadgen = cpu_seconds(std::process::id()) - loadgen_before;
    let steal = steal_pct(host_before, host_after);
    let idle = host_pct(host_before, host_after, |t| t.idle);
    let wal_after = wal_counters(target.addr).await;
    let (rss, steal_samples) = sampler.finish_with_steal();
    println!(
        "  {name} open loop at {rate} req/s: achieved {:.0} req/s  ack latency p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  errors {}  max RSS {:.0} MiB  host steal {steal:.1}%",
        out.ok as f64 / out.elapsed.as_secs_f64(),
        pct(&out.latencies, 0.50),
        pct(&out.latencies, 0.99),
        pct(&out.latencies, 0.999),
        pct(&out.latencies, 1.0),
        out.errors,
        rss
    );
    println!("             {}", wal_report(wal_before, wal_after));
    let per_req = |secs: f64| 1e6 * secs / out.ok.max(1) as f64;
    println!(
        "             server CPU {:.1} µs/req, load generator CPU {:.1} µs/req, machine idle {idle:.1}%, device writes {:.0} MiB ({:.1} KiB/req)",
        per_req(cpu),
        per_req(loadgen),
        disk as f64 / (1 << 20) as f64,
        disk as f64 / 1024.0 / out.ok.max(1) as f64
    );
    println!(
        "             load generator late (idle connection) by p50 {:.2} ms, p99 {:.2} ms (included in the latencies above)",
        pct(&out.wake_late, 0.50),
        pct(&out.wake_late, 0.99)
    );
    if std::env::var("INGEST_BENCH_TIMELINE").is_ok() {
        println!(
            "  open loop started at {} (UTC, to line up with the server log)",
            open_started.format("%H:%M:%S%.3f")
        );
        // Per 100 ms of the open loop: the worst ack and how many acks took over 5 ms,
        // to line up with flushes in the server log. Windows without a slow ack are
        // left out.
        let mut windows = std::collections::BTreeMap::<u32, (u32, u32)>::new();
        for (ms, us) in &out.timeline {
            let w = windows.entry(ms / 100).or_default();
            w.0 = w.0.max(*us);
            w.1 += u32::from(*us > 5_000);
        }
        let line: Vec<String> = windows
            .iter()
            .filter(|(_, (_, slow))| *slow > 0)
            .map(|(w, (us, slow))| format!("{}:{:.0}/{slow}", w * 100, *us as f64 / 1000.0))
            .collect();
        println!(
            "  timeline (ms since start: max ack ms/acks over 5 ms, windows of 100 ms with any): {}",
            line.join(" ")
        );
        let steal: Vec<String> = steal_samples
            .iter()
            .map(|(ms, stolen)| format!("{}:{stolen}", ms / 100 * 100))
            .collect();
        println!(
            "  host steal (ms since start: ms stolen from both CPUs in the 100 ms before): {}",
            steal.join(" ")
        );
    }
    (pct(&out.latencies, 0.99), steal)
}

/// Latency of the same requests sent directly to the app and through hookscope's
/// forwarding (closed loop, at 1 and at `--connections` connections).
async fn forward_overhead(args: &Args, app: &Target, hookscope: &Target) {
    println!(
        "forwarding overhead: {} s per phase, {}-byte JSON bodies, wal sync: {}",
        args.seconds, args.body, args.sync
    );
    for connections in [1, args.connections] {
        let mut p50s = Vec::new();
        for (name, addr, path) in [
            ("direct to the app", app.addr, "/webhook/app"),
            ("through hookscope", hookscope.addr, "/webhook/app"),
        ] {
            let reqs = Arc::new(requests(addr, path, args.body, false, 20_000));
            load(addr, Arc::clone(&reqs), connections, 2).await;
            let out = load(addr, reqs, connections, args.seconds).await;
            let p50 = pct(&out.latencies, 0.50);
            println!(
                "  {connections:>3} conn  {name:<18} {:>8.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  errors {}",
                out.ok as f64 / out.elapsed.as_secs_f64(),
                p50,
                pct(&out.latencies, 0.99),
                out.errors
            );
            p50s.push(p50);
        }
        println!(
            "  {connections:>3} conn  forwarding adds {:.3} ms at p50",
            p50s[1] - p50s[0]
        );
    }
}

/// Reads hookscope's WAL counters from `/metrics`: (groups, records, syncs, sync seconds).
async fn wal_counters(addr: SocketAddr) -> (f64, f64, f64, f64) {
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    let _ = exchange(&mut conn, req.as_bytes(), &mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    let get = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        get("hookscope_wal_groups_total"),
        get("hookscope_wal_records_total"),
        get("hookscope_wal_sync_duration_seconds_count"),
        get("hookscope_wal_sync_duration_seconds_sum"),
    )
}

fn wal_report(before: (f64, f64, f64, f64), after: (f64, f64, f64, f64)) -> String {
    let groups = after.0 - before.0;
    let records = after.1 - before.1;
    let syncs = after.2 - before.2;
    let sync_s = after.3 - before.3;
    format!(
        "WAL: {groups:.0} group commits, {:.1} records/group, mean fdatasync {:.3} ms",
        records / groups.max(1.0),
        1000.0 * sync_s / syncs.max(1.0)
    )
}
