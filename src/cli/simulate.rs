//! `hookscope simulate`: sends the traffic of `crate::simulate` to a running server
//! with a progress bar, then prints what was sent and answered per source.

use std::io::Write;
use std::sync::atomic::Ordering;

use anyhow::bail;

use super::SimulateArgs;
use crate::simulate::{self, Plan, Profile};

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let profile: Profile = args.profile.parse()?;
    for (name, ratio) in [
        ("--failure-ratio", args.failure_ratio),
        ("--duplicate-ratio", args.duplicate_ratio),
    ] {
        if !(0.0..=1.0).contains(&ratio) {
            bail!("{name} must be between 0 and 1");
        }
    }
    let plan = Plan {
        server: args.server.trim_end_matches('/').to_string(),
        rate: args.rate,
        duration: args.duration,
        profile,
        seed: args.seed,
        failure_ratio: args.failure_ratio,
        duplicate_ratio: args.duplicate_ratio,
    };
    eprintln!(
        "sending {} deliveries a second for {} to {} ({} profile); the server verifies their signatures when started with `hookscope serve --demo`",
        args.rate,
        humantime::format_duration(args.duration),
        plan.server,
        args.profile
    );
    let bar = indicatif::ProgressBar::new(args.duration.as_secs().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "simulate [{elapsed_precise}] {bar:30} {pos}/{len} s",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let summary = simulate::run(plan, |elapsed| bar.set_position(elapsed.as_secs())).await?;
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<10} {:>8} {:>8} {:>10} {:>8} {:>9} {:>9} {:>7}",
        "source", "sent", "acked", "duplicate", "retried", "failures", "rejected", "errors"
    )?;
    for (source, c) in &summary.per_source {
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        writeln!(
            out,
            "{:<10} {:>8} {:>8} {:>10} {:>8} {:>9} {:>9} {:>7}",
            source,
            n(&c.sent),
            n(&c.acknowledged),
            n(&c.duplicates),
            n(&c.retries),
            n(&c.reported_failures),
            n(&c.rejected),
            n(&c.errors)
        )?;
    }
    let sent = summary.total(|c| &c.sent);
    let acked = summary.total(|c| &c.acknowledged);
    writeln!(
        out,
        "{sent} deliveries sent in {:.1} s, {acked} acknowledged; see them: curl -s 'localhost:8080/api/events?limit=5'",
        summary.elapsed.as_secs_f64()
    )?;
    if acked < sent {
        writeln!(
            out,
            "note: {} were not acknowledged (rejected: start the server with --demo for the signatures; errors: the server was unreachable or too slow)",
            sent - acked
        )?;
    }
    Ok(())
}
