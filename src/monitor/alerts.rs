//! The alert state machine: what a rule's run means for each of its instances.
//!
//! A rule is a saved query with `-- alert:`; when its condition holds, each row it
//! returns is a problem, and the values of its key columns (`-- key:`, default
//! `source`) name the instance. Per instance:
//!
//! ```text
//!   (none) ──active──▶ pending ──active for `for`──▶ firing ──inactive for keep_firing_for──▶ resolved
//!                        │ inactive: dropped, nothing sent      │ still active: sent again once per renotify
//! ```
//!
//! With `for: 0` (the default) an instance fires at its first active run. Each
//! notification (firing, sent again, resolved) becomes a row of `alerts`, written
//! through the WAL before it is sent: a restart rebuilds the firing instances from
//! those rows (so it neither sends a firing alert again before its time nor forgets
//! one). A run that fails changes nothing: an alert never resolves because its rule
//! could not be evaluated. Pending instances are not kept across restarts.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::QueryFile;
use crate::model::AlertRow;

/// The alerting of a server: the instances, how often a firing one is sent again,
/// and where notifications go (a function, so this step does not depend on the
/// sinks').
pub struct Alerting {
    pub book: parking_lot::Mutex<AlertBook>,
    pub renotify: Duration,
    send: Box<dyn Fn(&AlertRow) + Send + Sync>,
    /// Set once the instances firing at the last stop were read back: until then
    /// no rule is judged (it would fire again what already fired).
    restored: std::sync::atomic::AtomicBool,
}

impl Alerting {
    pub fn new(renotify: Duration, send: impl Fn(&AlertRow) + Send + Sync + 'static) -> Alerting {
        Alerting {
            book: Default::default(),
            renotify,
            send: Box::new(send),
            restored: Default::default(),
        }
    }

    pub fn is_restored(&self) -> bool {
        self.restored.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set_restored(&self) {
        self.restored
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Sends a notification (in the background).
    pub fn send(&self, alert: &AlertRow) {
        (self.send)(alert);
    }

    /// Instances firing now.
    pub fn firing(&self) -> usize {
        self.book.lock().firing()
    }
}

/// Where an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Firing,
}

/// One instance of a rule.
#[derive(Debug, Clone)]
pub struct Instance {
    pub phase: Phase,
    /// Pending: since when; firing: when it fired.
    pub since: DateTime<Utc>,
    /// The last run that found it active.
    pub last_active: DateTime<Utc>,
    /// The last notification sent (firing only).
    pub last_notified: DateTime<Utc>,
    /// The row of its last active run.
    pub row: Value,
}

/// Every instance of every rule.
#[derive(Debug, Default)]
pub struct AlertBook {
    instances: HashMap<(String, String), Instance>,
}

impl AlertBook {
    /// Applies one successful run of rule `q` as of `at` that returned `total` rows,
    /// of which `rows` (objects of column → value) are judged (all of them unless
    /// there were more than the scheduler judges); returns the notifications to
    /// record and send.
    pub fn evaluate(
        &mut self,
        q: &QueryFile,
        at: DateTime<Utc>,
        rows: &[Value],
        total: u64,
        renotify: Duration,
    ) -> Vec<AlertRow> {
        let Some(condition) = q.alert else {
            return Vec::new();
        };
        // All judged, or nothing to judge (the condition does not hold).
        let complete = !condition.holds(total) || total <= rows.len() as u64;
        let mut active: BTreeMap<String, &Value> = BTreeMap::new();
        if condition.holds(total) {
            if rows.is_empty() {
                // A condition on the absence of rows: the rule itself is the instance.
                active.insert("{}".into(), &Value::Null);
            }
            for row in rows {
                active.insert(key_of(q, row), row);
            }
        }
        let mut out = Vec::new();
        let mut tracked = self.of_rule(&q.name);
        for (key, row) in &active {
            let id = (q.name.clone(), key.clone());
            match self.instances.get_mut(&id) {
                None if tracked >= MAX_INSTANCES => {
                    tracing::warn!(rule = %q.name, "an alert rule has {MAX_INSTANCES} instances already; more are not tracked (narrow its rows or its key)");
                }
                None => {
                    let phase = if q.pending_for.is_zero() {
                        Phase::Firing
                    } else {
                        Phase::Pending
                    };
                    let instance = Instance {
                        phase,
                        since: at,
                        last_active: at,
                        last_notified: at,
                        row: (*row).clone(),
                    };
                    if phase == Phase::Firing {
                        out.push(notice(q, key, &instance, at, None));
                    }
                    self.instances.insert(id, instance);
                    tracked += 1;
                }
                Some(i) => {
                    i.last_active = at;
                    i.row = (*row).clone();
                    match i.phase {
                        Phase::Pending if elapsed(i.since, at) >= q.pending_for => {
                            i.phase = Phase::Firing;
                            i.since = at;
                            i.last_notified = at;
                            out.push(notice(q, key, i, at, None));
                        }
                        Phase::Pending => {}
                        Phase::Firing if elapsed(i.last_notified, at) >= renotify => {
                            i.last_notified = at;
                            out.push(notice(q, key, i, at, None));
                        }
                        Phase::Firing => {}
                    }
                }
            }
        }
        // Instances of this rule the run did not find (unless it did not judge all).
        if !complete {
            return out;
        }
        let gone: Vec<(String, String)> = self
            .instances
            .keys()
            .filter(|(rule, key)| *rule == q.name && !active.contains_key(key))
            .cloned()
            .collect();
        for id in gone {
            let Some(i) = self.instances.get(&id) else {
                continue;
            };
            match i.phase {
                Phase::Pending => {
                    self.instances.remove(&id);
                }
                Phase::Firing if elapsed(i.last_active, at) >= q.keep_firing_for => {
                    out.push(notice(q, &id.1, i, at, Some(at)));
                    self.instances.remove(&id);
                }
                Phase::Firing => {}
            }
        }
        out
    }

    /// Takes back a firing instance recorded in `alerts` (at start).
    pub fn restore(
        &mut self,
        rule: &str,
        key: &str,
        fired_at: DateTime<Utc>,
        last_notified: DateTime<Utc>,
        row: Value,
    ) {
        self.instances.insert(
            (rule.to_string(), key.to_string()),
            Instance {
                phase: Phase::Firing,
                since: fired_at,
                last_active: last_notified,
                last_notified,
                row,
            },
        );
    }

    /// Instances firing now.
    pub fn firing(&self) -> usize {
        self.instances
            .values()
            .filter(|i| i.phase == Phase::Firing)
            .count()
    }

    fn of_rule(&self, rule: &str) -> usize {
        self.instances.keys().filter(|(r, _)| r == rule).count()
    }

    /// Resolves every instance of `rule` (it was removed, or is no longer a
    /// scheduled alert rule): one resolved notice each.
    pub fn retire(&mut self, rule: &str, at: DateTime<Utc>) -> Vec<AlertRow> {
        let ids: Vec<(String, String)> = self
            .instances
            .keys()
            .filter(|(r, _)| r == rule)
            .cloned()
            .collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(i) = self.instances.remove(&id)
                && i.phase == Phase::Firing
            {
                out.push(AlertRow {
                    fired_at_us: i.since.timestamp_micros(),
                    rule: rule.to_string(),
                    source: source_of(&id.1, &i.row),
                    severity: "info".into(),
                    message: format!("resolved: {rule} (the rule was removed or is no longer a scheduled alert rule)"),
                    details: capped(i.row.to_string()),
                    resolved_at_us: Some(at.timestamp_micros()),
                    key: id.1.clone(),
                    state: "resolved".into(),
                    notified_at_us: at.timestamp_micros(),
                });
            }
        }
        out
    }
}

/// The most bytes of a row kept in a notification's details.
pub const DETAILS_BYTES: usize = 8 * 1024;

/// `details` cut to [`DETAILS_BYTES`] (a row may hold a whole body): as a JSON string
/// saying it was cut.
fn capped(details: String) -> String {
    if details.len() <= DETAILS_BYTES {
        return details;
    }
    let mut cut = DETAILS_BYTES;
    while !details.is_char_boundary(cut) {
        cut -= 1;
    }
    serde_json::json!({"truncated": true, "row": &details[..cut]}).to_string()
}

/// Instances of one rule that are tracked; more are ignored (and logged).
pub const MAX_INSTANCES: usize = 1_000;

/// The `source` of an instance: its key's, else its row's.
fn source_of(key: &str, row: &Value) -> Option<String> {
    let key: Value = serde_json::from_str(key).unwrap_or(Value::Null);
    [key.get("source"), row.get("source")]
        .into_iter()
        .flatten()
        .find_map(Value::as_str)
        .map(str::to_string)
}

/// The rule's description with its parameters' values in place of `:name`.
fn described(q: &QueryFile) -> String {
    let mut names: Vec<&String> = q.params.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut text = q.description.clone();
    for name in names {
        text = text.replace(&format!(":{name}"), &q.params[name]);
    }
    text
}

fn elapsed(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or(Duration::ZERO)
}

/// The instance key of `row`: its key columns as a JSON object (a missing column is
/// null).
fn key_of(q: &QueryFile, row: &Value) -> String {
    let key: BTreeMap<&str, &Value> = q
        .key
        .iter()
        .map(|k| (k.as_str(), row.get(k).unwrap_or(&Value::Null)))
        .collect();
    serde_json::to_string(&key).unwrap_or_else(|_| "{}".into())
}

/// The notification (and `alerts` row) of instance `key` of rule `q` at `at`.
fn notice(
    q: &QueryFile,
    key: &str,
    i: &Instance,
    at: DateTime<Utc>,
    resolved: Option<DateTime<Utc>>,
) -> AlertRow {
    let key_value: Value = serde_json::from_str(key).unwrap_or(Value::Null);
    let source = source_of(key, &i.row);
    let what = match key_value.as_object() {
        Some(o) if !o.is_empty() => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "the rule".into(),
    };
    let message = match resolved {
        Some(_) => format!("resolved: {} for {what}", q.name),
        None => {
            let about = if q.description.is_empty() {
                String::new()
            } else {
                format!(" ({})", described(q))
            };
            format!("{}: {} for {what}{about}", q.severity, q.name)
        }
    };
    AlertRow {
        fired_at_us: i.since.timestamp_micros(),
        rule: q.name.clone(),
        source,
        severity: q.severity.clone(),
        message,
        details: capped(i.row.to_string()),
        resolved_at_us: resolved.map(|t| t.timestamp_micros()),
        key: key.to_string(),
        state: if resolved.is_some() {
            "resolved"
        } else {
            "firing"
        }
        .into(),
        notified_at_us: at.timestamp_micros(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(extra: &str) -> QueryFile {
        let text = format!("-- alert: rows > 0\n-- description: d\n{extra}SELECT 1");
        super::super::file::parse("r.sql", "spike", &text).unwrap()
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn states(out: &[AlertRow]) -> Vec<(String, String)> {
        out.iter()
            .map(|a| (a.state.clone(), a.key.clone()))
            .collect()
    }

    #[test]
    fn fires_once_renotifies_after_its_interval_and_resolves_once() {
        let q = rule("");
        let mut book = AlertBook::default();
        let a = json!({"source": "stripe", "n": 40});
        let b = json!({"source": "github", "n": 9});
        let out = book.evaluate(&q, t(0), std::slice::from_ref(&a), 1, HOUR);
        assert_eq!(
            states(&out),
            [("firing".into(), r#"{"source":"stripe"}"#.into())]
        );
        assert_eq!(out[0].source.as_deref(), Some("stripe"));
        assert!(out[0].message.contains("spike") && out[0].message.contains("source=stripe"));
        assert!(
            book.evaluate(&q, t(60), &[a.clone(), b.clone()], 2, HOUR)
                .len()
                == 1
        );
        assert!(
            book.evaluate(&q, t(120), &[a.clone(), b.clone()], 2, HOUR)
                .is_empty()
        );
        assert_eq!(book.firing(), 2);
        // An hour after its notification, stripe is sent again; github later.
        let again = book.evaluate(&q, t(3600), &[a.clone(), b.clone()], 2, HOUR);
        assert_eq!(
            states(&again),
            [("firing".into(), r#"{"source":"stripe"}"#.into())]
        );
        assert_eq!(again[0].fired_at_us, t(0).timestamp_micros());
        // Both clear: one resolved notice each, then nothing.
        let resolved = book.evaluate(&q, t(3700), &[], 0, HOUR);
        assert_eq!(resolved.len(), 2);
        assert!(
            resolved
                .iter()
                .all(|r| r.state == "resolved"
                    && r.resolved_at_us == Some(t(3700).timestamp_micros()))
        );
        assert!(book.evaluate(&q, t(3760), &[], 0, HOUR).is_empty());
        assert_eq!(book.firing(), 0);
    }

    #[test]
    fn pending_for_and_keep_firing_for_hold_back_flapping() {
        let q = rule("-- for: 2m\n-- keep_firing_for: 5m\n");
        let mut book = AlertBook::default();
        let a = json!({"source": "s"});
        assert!(
            book.evaluate(&q, t(0), std::slice::from_ref(&a), 1, HOUR)
                .is_empty()
        );
        // Gone before `for` passed: dropped silently.
        assert!(book.evaluate(&q, t(60), &[], 0, HOUR).is_empty());
        assert!(
            book.evaluate(&q, t(120), std::slice::from_ref(&a), 1, HOUR)
                .is_empty()
        );
        assert!(
            book.evaluate(&q, t(180), std::slice::from_ref(&a), 1, HOUR)
                .is_empty()
        );
        let fired = book.evaluate(&q, t(240), std::slice::from_ref(&a), 1, HOUR);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].fired_at_us, t(240).timestamp_micros());
        // Flapping within keep_firing_for: no resolve, no new fire.
        assert!(book.evaluate(&q, t(300), &[], 0, HOUR).is_empty());
        assert!(
            book.evaluate(&q, t(360), std::slice::from_ref(&a), 1, HOUR)
                .is_empty()
        );
        assert!(book.evaluate(&q, t(420), &[], 0, HOUR).is_empty());
        let resolved = book.evaluate(&q, t(360 + 300), &[], 0, HOUR);
        assert_eq!(
            states(&resolved),
            [("resolved".into(), r#"{"source":"s"}"#.into())]
        );
    }

    #[test]
    fn a_restored_instance_is_not_sent_again_before_its_time() {
        let q = rule("");
        let mut book = AlertBook::default();
        book.restore("spike", r#"{"source":"s"}"#, t(0), t(600), json!({}));
        let a = json!({"source": "s"});
        assert!(
            book.evaluate(&q, t(900), std::slice::from_ref(&a), 1, HOUR)
                .is_empty()
        );
        assert_eq!(book.evaluate(&q, t(600 + 3600), &[a], 1, HOUR).len(), 1);
        let resolved = book.evaluate(&q, t(5000), &[], 0, HOUR);
        assert_eq!(resolved[0].fired_at_us, t(0).timestamp_micros());
    }

    #[test]
    fn the_condition_counts_every_row_and_a_partial_run_resolves_nothing() {
        let text = "-- alert: rows > 1000\n-- schedule: every 1m\nSELECT 1";
        let q = super::super::file::parse("r.sql", "many", text).unwrap();
        let mut book = AlertBook::default();
        let judged: Vec<Value> = (0..1000)
            .map(|i| json!({"source": format!("s{i}")}))
            .collect();
        // 5,000 rows returned, 1,000 judged: the condition holds.
        assert_eq!(book.evaluate(&q, t(0), &judged, 5_000, HOUR).len(), 1_000);
        // Other rows judged, still partial: nothing resolves, and no more instances
        // than the cap are tracked.
        let others: Vec<Value> = (1000..2000)
            .map(|i| json!({"source": format!("s{i}")}))
            .collect();
        assert!(book.evaluate(&q, t(60), &others, 5_000, HOUR).is_empty());
        assert_eq!(book.firing(), MAX_INSTANCES);
        // A complete run without them resolves them.
        assert_eq!(book.evaluate(&q, t(120), &[], 0, HOUR).len(), 1_000);
        assert_eq!(book.retire("many", t(180)).len(), 0);
    }

    #[test]
    fn a_retired_rule_resolves_its_firing_instances() {
        let q = rule("");
        let mut book = AlertBook::default();
        book.evaluate(
            &q,
            t(0),
            &[json!({"source": "a"}), json!({"source": "b"})],
            2,
            HOUR,
        );
        let out = book.retire("spike", t(60));
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|r| r.state == "resolved" && r.message.contains("removed"))
        );
        assert_eq!(book.firing(), 0);
    }

    #[test]
    fn a_rule_on_no_rows_resolves_when_many_rows_come_back_and_details_are_capped() {
        let text = "-- alert: rows = 0\n-- schedule: every 1m\nSELECT 1";
        let q = super::super::file::parse("r.sql", "quiet", text).unwrap();
        let mut book = AlertBook::default();
        assert_eq!(book.evaluate(&q, t(0), &[], 0, HOUR).len(), 1);
        let judged: Vec<Value> = (0..1000)
            .map(|i| json!({"source": format!("s{i}")}))
            .collect();
        let out = book.evaluate(&q, t(60), &judged, 5_000, HOUR);
        assert_eq!(states(&out), [("resolved".into(), "{}".into())]);
        let big = rule("");
        let row = json!({"source": "s", "body": "x".repeat(100_000)});
        let out = book.evaluate(&big, t(0), std::slice::from_ref(&row), 1, HOUR);
        assert!(
            out[0].details.len() < DETAILS_BYTES + 100,
            "{}",
            out[0].details.len()
        );
        assert!(out[0].details.contains("truncated"));
    }

    #[test]
    fn a_condition_on_no_rows_makes_the_rule_its_instance() {
        let text = "-- alert: rows = 0\n-- schedule: every 1m\nSELECT 1";
        let q = super::super::file::parse("r.sql", "quiet", text).unwrap();
        let mut book = AlertBook::default();
        let out = book.evaluate(&q, t(0), &[], 0, HOUR);
        assert_eq!(states(&out), [("firing".into(), "{}".into())]);
        assert!(out[0].message.contains("the rule"));
        let out = book.evaluate(&q, t(60), &[json!({"source": "s"})], 1, HOUR);
        assert_eq!(states(&out), [("resolved".into(), "{}".into())]);
    }
}
