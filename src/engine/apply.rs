//! Applying durable records, in WAL order, on the WAL's thread: dedup (attempt,
//! retry gap), forwards (a start waits for its answer), rows into the buffer; and
//! what the applier saw at each WAL cut.
//!
//! Invariant: a record is applied exactly as it was live when it is replayed after a
//! restart (records the committed manifest covers are skipped, forward starts never).

use std::sync::Arc;

use parking_lot::Mutex;

use super::*;

/// The state of the applier at a WAL cut: the flush that made the cut writes the rows
/// up to `through` and may release the WAL only below `oldest_open_forward`.
#[derive(Debug, Clone)]
pub(super) struct CutState {
    pub(super) through: u64,
    /// The dedup index's changes up to the cut (committed with the rows).
    pub(super) dedup: Delta,
    /// The oldest forward start still waiting for its answer at the cut. Its row is
    /// written with its answer, after the cut, so this flush does not commit it: the
    /// segment holding the start must outlive this flush even if the answer arrives
    /// while it runs.
    pub(super) oldest_open_forward: Option<u64>,
}

/// Forwarded deliveries whose start is durable and whose answer is not yet.
#[derive(Debug, Default)]
pub(crate) struct OpenForwards {
    /// WAL sequence of each open start → delivery id.
    pub(super) open: Mutex<std::collections::BTreeMap<u64, String>>,
}

impl OpenForwards {
    /// The oldest open start's sequence number: WAL segments from it on must stay.
    pub(super) fn oldest(&self) -> Option<u64> {
        self.open.lock().keys().next().copied()
    }
    pub(super) fn ids(&self) -> Vec<String> {
        self.open.lock().values().cloned().collect()
    }
}

/// Hands durable records to the dedup index and the buffer, in WAL order.
pub(super) struct LakeApplier {
    pub(super) catalog: Arc<Catalog>,
    pub(super) dedup: DedupIndex,
    /// Records at or below this are in committed files already.
    pub(super) skip_through: u64,
    /// Started forwards by delivery id, with the start's sequence number.
    pub(super) forwards: std::collections::HashMap<String, (u64, Box<Delivery>)>,
    pub(super) open: Arc<OpenForwards>,
    pub(super) last_cut: Arc<Mutex<Option<CutState>>>,
}

impl LakeApplier {
    fn apply_entry(&mut self, buf: &mut Buffer, seq: u64, entry: &Entry) -> Applied {
        match entry {
            Entry::Delivery(d) => self.push_delivery(buf, seq, d),
            Entry::Outcome(o) => {
                buf.push_outcome(seq, o);
                Applied::REPORT
            }
            Entry::Outcomes(list) => {
                for o in list {
                    buf.push_outcome(seq, o);
                }
                Applied::REPORT
            }
            Entry::QueryRun(r) => {
                buf.push_query_run(seq, r);
                Applied::REPORT
            }
            Entry::Alert(a) => {
                buf.push_alert(seq, a);
                Applied::REPORT
            }
            Entry::ForwardStart(d) => {
                self.forwards.insert(d.id.clone(), (seq, d.clone()));
                self.open.open.lock().insert(seq, d.id.clone());
                Applied {
                    attempt: 0,
                    duplicate: false,
                }
            }
            Entry::ForwardDone(r) => {
                let Some((start, mut d)) = self.forwards.remove(&r.id) else {
                    tracing::warn!(id = %r.id, "forward answer without a recorded start; ignored");
                    return Applied {
                        attempt: 0,
                        duplicate: false,
                    };
                };
                self.open.open.lock().remove(&start);
                d.status_code = r.status_code;
                d.upstream_status = r.upstream_status;
                d.upstream_latency_ms = r.upstream_latency_ms;
                d.upstream_error = r.upstream_error.clone();
                let applied = self.push_delivery(buf, seq, &d);
                buf.push_outcome(seq, &forward_outcome(&d, r));
                applied
            }
        }
    }

    fn push_delivery(&mut self, buf: &mut Buffer, seq: u64, d: &Delivery) -> Applied {
        let seen = self
            .dedup
            .observe(&d.source, &d.dedup_key, d.received_at_us);
        let derived: Derived = seen.derived(d.provider_attempt);
        buf.push_delivery(seq, d, derived);
        Applied {
            attempt: derived.attempt,
            duplicate: derived.is_duplicate,
        }
    }
}

/// The outcome hookscope records itself for a forwarded delivery: 2xx is success.
fn forward_outcome(d: &Delivery, r: &ForwardResult) -> Outcome {
    let success = r.upstream_status.is_some_and(|s| (200..300).contains(&s));
    let (error_type, error_message) = match (&r.upstream_error, r.upstream_status) {
        (Some(e), _) => (
            Some(e.split(':').next().unwrap_or(e).trim().to_string()),
            Some(e.clone()),
        ),
        (None, Some(s)) if !success => (
            Some(format!("http_{s}")),
            Some(format!("the app answered {s}")),
        ),
        _ => (None, None),
    };
    Outcome {
        id: d.id.clone(),
        reported_at_us: r.completed_at_us,
        source: d.source.clone(),
        delivery_id: Some(d.id.clone()),
        event_id: d.event_id.clone(),
        status: if success { "success" } else { "failure" }.to_string(),
        processing_time_ms: r.upstream_latency_ms,
        error_type,
        error_message,
        records_processed: None,
        attributes: serde_json::json!({ "forwarded": true, "upstream_status": r.upstream_status })
            .to_string(),
    }
}

impl Applier for LakeApplier {
    type Output = Applied;

    fn apply(&mut self, records: &[(u64, Entry)]) -> Vec<Applied> {
        let catalog = Arc::clone(&self.catalog);
        catalog.with_buffer(|buf| {
            records
                .iter()
                .map(|(seq, entry)| self.apply_entry(buf, *seq, entry))
                .collect()
        })
    }

    fn replay(&mut self, seq: u64, entry: Entry) {
        let catalog = Arc::clone(&self.catalog);
        match &entry {
            // A start is needed even when committed files cover its sequence: its row
            // is written only with its answer, which may come later in the WAL.
            Entry::ForwardStart(_) => {
                catalog.with_buffer(|buf| self.apply_entry(buf, seq, &entry));
            }
            // An answer already committed closes its start without adding a row.
            Entry::ForwardDone(r) if seq <= self.skip_through => {
                if let Some((start, _)) = self.forwards.remove(&r.id) {
                    self.open.open.lock().remove(&start);
                }
            }
            _ if seq <= self.skip_through => {}
            _ => {
                catalog.with_buffer(|buf| self.apply_entry(buf, seq, &entry));
            }
        }
    }

    fn cut(&mut self, through: u64) {
        self.catalog.with_buffer(|buf| buf.cut(through));
        let mut cut = CutState {
            through,
            dedup: self.dedup.take_delta(),
            oldest_open_forward: self.open.oldest(),
        };
        // A cut nobody took (its flush was abandoned after the rotation) still holds
        // changes the persisted index needs, and a forward its flush never released:
        // fold them into this one.
        let mut slot = self.last_cut.lock();
        if let Some(mut earlier) = slot.take() {
            earlier.dedup.append(std::mem::take(&mut cut.dedup));
            cut.dedup = earlier.dedup;
            cut.oldest_open_forward = match (earlier.oldest_open_forward, cut.oldest_open_forward) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        *slot = Some(cut);
    }
}
