//! Fail points: named steps of the write path where a test can make the real server
//! crash, or a step fail, exactly there instead of by luck.
//!
//! Set `HOOKSCOPE_FAILPOINTS` to `point=action` pairs separated by `;`:
//! - `crash`: abort the process when the step is reached (no destructors, no flush,
//!   like `kill -9` at that instant);
//! - `error`: the step fails with an injected I/O error, every time it is reached;
//! - `error*N`: only the first N times;
//! - `error*N@K`: N times from the K-th time it is reached on (1-based).
//!
//! Example: `HOOKSCOPE_FAILPOINTS="lake_sync:_manifest=error*1;after_wal_release=crash"`.
//!
//! Invariant: with the variable unset (every real deployment), a fail point is one
//! load of an initialised `OnceLock` and a lookup in an empty map; they sit on flush and
//! recovery steps, never on the per-request path.

use std::collections::HashMap;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

const VAR: &str = "HOOKSCOPE_FAILPOINTS";

#[derive(Debug)]
enum Action {
    Crash,
    /// Passes `skip` times, then fails while `left` is above zero (`u64::MAX`:
    /// always).
    Error {
        skip: AtomicU64,
        left: AtomicU64,
    },
}

fn points() -> &'static HashMap<String, Action> {
    static POINTS: OnceLock<HashMap<String, Action>> = OnceLock::new();
    POINTS.get_or_init(|| parse(&std::env::var(VAR).unwrap_or_default()))
}

fn parse(spec: &str) -> HashMap<String, Action> {
    let mut out = HashMap::new();
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, action)) = item.split_once('=') else {
            eprintln!("{VAR}: ignoring {item:?} (expected point=action)");
            continue;
        };
        let action = match action.trim() {
            "crash" => Action::Crash,
            "error" => Action::Error {
                skip: AtomicU64::new(0),
                left: AtomicU64::new(u64::MAX),
            },
            other => match other.strip_prefix("error*").and_then(parse_count) {
                Some((n, from)) => Action::Error {
                    skip: AtomicU64::new(from.saturating_sub(1)),
                    left: AtomicU64::new(n),
                },
                None => {
                    eprintln!(
                        "{VAR}: ignoring {item:?} (actions: crash, error, error*N, error*N@K)"
                    );
                    continue;
                }
            },
        };
        out.insert(name.trim().to_string(), action);
    }
    out
}

/// `N` or `N@K` (K: the first hit that fails, 1-based).
fn parse_count(text: &str) -> Option<(u64, u64)> {
    match text.split_once('@') {
        Some((n, k)) => Some((n.parse().ok()?, k.parse().ok()?)),
        None => Some((text.parse().ok()?, 1)),
    }
}

/// Aborts the process here when `point=crash` is set.
pub fn crash(point: &str) {
    if let Some(Action::Crash) = points().get(point) {
        eprintln!("{VAR}: {point}=crash: aborting the process (crash test)");
        std::process::abort();
    }
}

/// Fails with an injected I/O error here when `point=error` is set (and its count is
/// not used up); also crashes when `point=crash` is set.
pub fn error(point: &str) -> io::Result<()> {
    match points().get(point) {
        Some(Action::Crash) => crash(point),
        Some(Action::Error { skip, left }) => {
            let skipped = skip
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            if skipped {
                return Ok(());
            }
            let took = left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| match n {
                    0 => None,
                    u64::MAX => Some(u64::MAX),
                    n => Some(n - 1),
                })
                .is_ok();
            if took {
                eprintln!("{VAR}: {point}=error: failing this step (fault test)");
                return Err(io::Error::other(format!(
                    "injected failure at fail point {point}"
                )));
            }
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_and_counts_run_out() {
        let points = parse("a=crash; b=error ;c=error*2;d=nonsense;e;f=error*1@3");
        assert!(matches!(points.get("a"), Some(Action::Crash)));
        assert!(matches!(points.get("b"), Some(Action::Error { .. })));
        assert!(!points.contains_key("d") && !points.contains_key("e"));
        let counts = |name: &str| match points.get(name) {
            Some(Action::Error { skip, left }) => {
                (skip.load(Ordering::Relaxed), left.load(Ordering::Relaxed))
            }
            _ => panic!("{name} should be an error point"),
        };
        assert_eq!(counts("c"), (0, 2));
        assert_eq!(counts("f"), (2, 1));
    }
}
