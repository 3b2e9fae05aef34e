//! Fail points: named steps of the write path where a test can make the real server
//! crash, or a step fail, exactly there instead of by luck.
//!
//! Set `HOOKSCOPE_FAILPOINTS` to `point=action` pairs separated by `;`:
//! - `crash`: abort the process when the step is reached (no destructors, no flush,
//!   like `kill -9` at that instant);
//! - `error`: the step fails with an injected I/O error, every time it is reached;
//! - `error*N`: only the first N times.
//!
//! Example: `HOOKSCOPE_FAILPOINTS="manifest_sync=error*1;after_wal_release=crash"`.
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
    /// Fails while `left` is above zero (`u64::MAX`: always).
    Error {
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
                left: AtomicU64::new(u64::MAX),
            },
            other => match other.strip_prefix("error*").map(str::parse::<u64>) {
                Some(Ok(n)) => Action::Error {
                    left: AtomicU64::new(n),
                },
                _ => {
                    eprintln!("{VAR}: ignoring {item:?} (actions: crash, error, error*N)");
                    continue;
                }
            },
        };
        out.insert(name.trim().to_string(), action);
    }
    out
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
        Some(Action::Error { left }) => {
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
        let points = parse("a=crash; b=error ;c=error*2;d=nonsense;e");
        assert!(matches!(points.get("a"), Some(Action::Crash)));
        assert!(matches!(points.get("b"), Some(Action::Error { .. })));
        assert!(!points.contains_key("d") && !points.contains_key("e"));
        let Some(Action::Error { left }) = points.get("c") else {
            panic!("c should be an error point");
        };
        assert_eq!(left.load(Ordering::Relaxed), 2);
    }
}
