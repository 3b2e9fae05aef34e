//! The queryable buffer: durable records not yet in a committed Parquet file, held
//! as Arrow record batches per table.
//!
//! Rows are appended to Arrow builders (the *active* rows) and frozen into immutable
//! [`Chunk`]s when a query needs them, when they grow large, or at a WAL cut. Each
//! chunk remembers the highest WAL sequence number in it.
//!
//! Invariants:
//! - Chunks are in WAL order and never straddle a cut: after [`Buffer::cut`] with
//!   sequence `S`, every row with seq ≤ S is in chunks with `max_seq ≤ S`, so the
//!   flusher can take exactly the rows up to a cut and later drop exactly those.
//! - A row is in the buffer from the moment its WAL record is durable until
//!   [`Buffer::drop_through`] removes it, which the catalog does in the same critical
//!   section that publishes the Parquet file holding it: no row is missing or counted
//!   twice.

use std::collections::VecDeque;
use std::time::Instant;

use arrow::array::ArrayRef;
use arrow::compute::concat_batches;
use arrow::record_batch::RecordBatch;

use crate::model::{AlertRow, Delivery, Outcome, QueryRun, StoredBody};
use crate::tables::{self, Table};

/// Rows per chunk beyond which the active builders are frozen on their own, or bytes:
/// Arrow's string builders hold at most 2 GiB per column (32-bit offsets) and panic
/// past it, so a chunk must never grow near that, whatever the bodies.
use crate::tables::{CHUNK_BYTES, CHUNK_ROWS};
/// Chunks smaller than this are merged with their predecessor on freeze.
const SMALL_CHUNK: usize = 1024;

/// What the dedup index derived for a delivery when it was applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Derived {
    pub attempt: i32,
    pub is_duplicate: bool,
    pub retry_gap_ms: Option<f64>,
}

impl Derived {
    /// A first arrival.
    #[cfg(test)]
    pub(crate) const FIRST: Derived = Derived {
        attempt: 1,
        is_duplicate: false,
        retry_gap_ms: None,
    };
}

/// An immutable run of buffered rows.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub batch: RecordBatch,
    /// Highest WAL sequence number of a row in the batch.
    pub max_seq: u64,
}

/// Columns under construction for one table.
trait Columns: Default + Send {
    fn table() -> Table;
    fn len(&self) -> usize;
    /// See `Builders::finish` in `tables`.
    fn finish(&mut self, full: bool) -> Vec<ArrayRef>;
}

/// One table's buffered rows.
struct TableBuffer<C: Columns> {
    chunks: VecDeque<Chunk>,
    active: C,
    active_max_seq: u64,
    /// Approximate bytes of the active rows.
    active_bytes: usize,
    /// Sequence of the last cut; chunks after it may be merged, not across it.
    last_cut: u64,
    /// Rows were lost to an internal error: no flush may commit past them.
    damaged: bool,
    rows: usize,
    approx_bytes: usize,
    oldest: Option<Instant>,
}

impl<C: Columns> Default for TableBuffer<C> {
    fn default() -> Self {
        Self {
            chunks: VecDeque::new(),
            active: C::default(),
            active_max_seq: 0,
            active_bytes: 0,
            last_cut: 0,
            damaged: false,
            rows: 0,
            approx_bytes: 0,
            oldest: None,
        }
    }
}

impl<C: Columns> TableBuffer<C> {
    fn appended(&mut self, seq: u64, bytes: usize) {
        self.active_max_seq = self.active_max_seq.max(seq);
        self.rows += 1;
        self.approx_bytes += bytes;
        self.active_bytes += bytes;
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        if self.active.len() >= CHUNK_ROWS || self.active_bytes >= CHUNK_BYTES {
            self.freeze(true);
        }
    }

    /// Freezes the active rows into a chunk; `full` when they reached a chunk's size.
    fn freeze(&mut self, full: bool) {
        if self.active.len() == 0 {
            return;
        }
        let bytes = std::mem::take(&mut self.active_bytes);
        let columns = self.active.finish(full);
        let batch = match RecordBatch::try_new(C::table().schema(), columns) {
            Ok(b) => b,
            Err(e) => {
                // The builders are filled from typed records; a mismatch is a bug. The
                // rows are gone from the buffer but not from the WAL: flushes stop, so
                // the WAL is never released past them, and a restart recovers them.
                tracing::error!(table = C::table().name(), error = %e, "buffer columns do not match the schema; flushes stop until a restart");
                self.damaged = true;
                return;
            }
        };
        let max_seq = self.active_max_seq;
        if let Some(prev) = self.chunks.back_mut() {
            let mergeable = prev.max_seq > self.last_cut
                && prev.batch.num_rows() < SMALL_CHUNK
                && batch.num_rows() < SMALL_CHUNK
                && prev.batch.get_array_memory_size() + bytes < CHUNK_BYTES;
            if mergeable && let Ok(merged) = concat_batches(&batch.schema(), [&prev.batch, &batch])
            {
                prev.batch = merged;
                prev.max_seq = max_seq;
                return;
            }
        }
        self.chunks.push_back(Chunk { batch, max_seq });
    }

    fn snapshot(&mut self) -> Vec<RecordBatch> {
        self.freeze(false);
        self.chunks.iter().map(|c| c.batch.clone()).collect()
    }

    fn cut(&mut self, through: u64) {
        self.freeze(false);
        self.last_cut = through;
    }

    fn take_through(&self, through: u64) -> Vec<RecordBatch> {
        self.chunks
            .iter()
            .take_while(|c| c.max_seq <= through)
            .map(|c| c.batch.clone())
            .collect()
    }

    fn drop_through(
        &mut self,
        through: u64,
        flush_started: Instant,
        removed: &mut Vec<RecordBatch>,
    ) {
        while self.chunks.front().is_some_and(|c| c.max_seq <= through) {
            if let Some(c) = self.chunks.pop_front() {
                self.rows -= c.batch.num_rows();
                self.approx_bytes = self
                    .approx_bytes
                    .saturating_sub(c.batch.get_array_memory_size());
                removed.push(c.batch);
            }
        }
        if self.rows == 0 {
            self.approx_bytes = 0;
            self.oldest = None;
        } else {
            self.oldest = Some(flush_started);
        }
    }
}

/// How long `query_runs` rows wait in the buffer, with no other rows, before they
/// make a flush due.
pub const QUIET_ROWS_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// All tables' buffered rows. Not synchronised: the catalog owns it behind a lock.
#[derive(Default)]
pub struct Buffer {
    deliveries: TableBuffer<tables::deliveries::Builders>,
    outcomes: TableBuffer<tables::outcomes::Builders>,
    query_runs: TableBuffer<tables::query_runs::Builders>,
    alerts: TableBuffer<tables::alerts::Builders>,
}

impl Buffer {
    /// Appends a durable delivery with its derived columns.
    pub fn push_delivery(&mut self, seq: u64, d: &Delivery, derived: Derived) {
        self.deliveries.active.push((d, derived));
        let body = match &d.body {
            StoredBody::Text(t) => t.len(),
            StoredBody::Binary(b) => b.len() * 4 / 3,
            StoredBody::Omitted => 0,
        };
        self.deliveries
            .appended(seq, 256 + body + d.headers_json.len());
    }

    /// Appends a durable outcome report.
    pub fn push_outcome(&mut self, seq: u64, o: &Outcome) {
        self.outcomes.active.push(o);
        let text = o.attributes.len() + o.error_message.as_ref().map_or(0, String::len);
        self.outcomes.appended(seq, 192 + text);
    }

    /// Appends a durable saved-query run.
    pub fn push_query_run(&mut self, seq: u64, r: &QueryRun) {
        self.query_runs.active.push(r);
        let text = r.name.len() + r.error.as_ref().map_or(0, String::len);
        self.query_runs.appended(seq, 128 + text);
    }

    /// Appends a durable alert notification.
    pub fn push_alert(&mut self, seq: u64, a: &AlertRow) {
        self.alerts.active.push(a);
        let text = a.message.len() + a.details.len() + a.key.len();
        self.alerts.appended(seq, 160 + text);
    }

    /// Every buffered row of `table`, as batches (freezes the active rows).
    pub fn snapshot(&mut self, table: Table) -> Vec<RecordBatch> {
        match table {
            Table::Deliveries => self.deliveries.snapshot(),
            Table::Outcomes => self.outcomes.snapshot(),
            Table::QueryRuns => self.query_runs.snapshot(),
            Table::Alerts => self.alerts.snapshot(),
        }
    }

    /// Marks a WAL cut: all rows so far are frozen, none later will join their chunks.
    pub fn cut(&mut self, through: u64) {
        self.deliveries.cut(through);
        self.outcomes.cut(through);
        self.query_runs.cut(through);
        self.alerts.cut(through);
    }

    /// The rows of `table` with seq ≤ `through` (call after a cut at `through`).
    pub fn take_through(&self, table: Table, through: u64) -> Vec<RecordBatch> {
        match table {
            Table::Deliveries => self.deliveries.take_through(through),
            Table::Outcomes => self.outcomes.take_through(through),
            Table::QueryRuns => self.query_runs.take_through(through),
            Table::Alerts => self.alerts.take_through(through),
        }
    }

    /// Forgets every row with seq ≤ `through`: they are in committed files now. The
    /// removed batches are returned so the caller can free them outside any lock.
    #[must_use = "free the removed batches outside the catalog lock"]
    pub fn drop_through(&mut self, through: u64, flush_started: Instant) -> Vec<RecordBatch> {
        let mut removed = Vec::new();
        self.deliveries
            .drop_through(through, flush_started, &mut removed);
        self.outcomes
            .drop_through(through, flush_started, &mut removed);
        self.query_runs
            .drop_through(through, flush_started, &mut removed);
        self.alerts
            .drop_through(through, flush_started, &mut removed);
        removed
    }

    /// True once rows were lost to an internal error (see `freeze`): nothing may be
    /// committed past them.
    pub fn damaged(&self) -> bool {
        self.deliveries.damaged
            || self.outcomes.damaged
            || self.query_runs.damaged
            || self.alerts.damaged
    }

    /// Buffered rows over all tables.
    pub fn rows(&self) -> usize {
        self.deliveries.rows + self.outcomes.rows + self.query_runs.rows + self.alerts.rows
    }

    /// Rough memory held by buffered rows.
    pub fn approx_bytes(&self) -> usize {
        self.deliveries.approx_bytes
            + self.outcomes.approx_bytes
            + self.query_runs.approx_bytes
            + self.alerts.approx_bytes
    }

    /// When the oldest buffered row arrived (what the flush interval counts from).
    /// Saved-query runs count only once they are [`QUIET_ROWS_AGE`] old: a server
    /// with no traffic still runs its queries every minute, and flushing each run's
    /// row alone would write a file a minute (the rows are durable in the WAL).
    pub fn oldest(&self) -> Option<Instant> {
        let runs = self
            .query_runs
            .oldest
            .filter(|t| t.elapsed() >= QUIET_ROWS_AGE);
        [
            self.deliveries.oldest,
            self.outcomes.oldest,
            self.alerts.oldest,
            runs,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// `Columns` for the builders `table_columns!` generated for each table.
macro_rules! columns_of {
    ($($module:ident => $table:ident),*) => {$(
        impl Columns for tables::$module::Builders {
            fn table() -> Table {
                Table::$table
            }
            fn len(&self) -> usize {
                self.len()
            }
            fn finish(&mut self, full: bool) -> Vec<ArrayRef> {
                self.finish(full)
            }
        }
    )*};
}

columns_of!(
    deliveries => Deliveries,
    outcomes => Outcomes,
    query_runs => QueryRuns,
    alerts => Alerts
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::sample_delivery;
    use arrow::array::AsArray;

    const D: Derived = Derived::FIRST;

    fn rows(batches: &[RecordBatch]) -> usize {
        batches.iter().map(|b| b.num_rows()).sum()
    }

    #[test]
    fn saved_query_runs_alone_do_not_make_a_flush_due_at_once() {
        let mut buf = Buffer::default();
        let run = QueryRun {
            name: "q".into(),
            scheduled_for_us: 1,
            started_at_us: 2,
            duration_ms: 1.0,
            rows: 0,
            error: None,
            trigger: "schedule".into(),
        };
        buf.push_query_run(1, &run);
        assert_eq!(buf.rows(), 1);
        assert_eq!(buf.oldest(), None);
        let outcome = Outcome {
            id: "o".into(),
            reported_at_us: 3,
            source: "s".into(),
            delivery_id: None,
            event_id: None,
            status: "success".into(),
            processing_time_ms: None,
            error_type: None,
            error_message: None,
            records_processed: None,
            attributes: "{}".into(),
        };
        buf.push_outcome(2, &outcome);
        assert!(buf.oldest().is_some());
    }

    #[test]
    fn snapshot_sees_every_appended_row() {
        let mut buf = Buffer::default();
        for seq in 1..=10 {
            buf.push_delivery(seq, &sample_delivery(), D);
        }
        assert_eq!(rows(&buf.snapshot(Table::Deliveries)), 10);
        buf.push_delivery(11, &sample_delivery(), D);
        assert_eq!(rows(&buf.snapshot(Table::Deliveries)), 11);
        assert_eq!(buf.rows(), 11);
    }

    #[test]
    fn a_cut_separates_flushed_rows_from_later_ones() {
        let mut buf = Buffer::default();
        for seq in 1..=5 {
            buf.push_delivery(seq, &sample_delivery(), D);
        }
        buf.snapshot(Table::Deliveries);
        buf.push_delivery(6, &sample_delivery(), D);
        buf.cut(6);
        // Small chunks after the cut must not merge into the flushed ones.
        buf.push_delivery(7, &sample_delivery(), D);
        buf.snapshot(Table::Deliveries);
        assert_eq!(rows(&buf.take_through(Table::Deliveries, 6)), 6);
        buf.push_delivery(8, &sample_delivery(), D);
        let _ = buf.drop_through(6, Instant::now());
        assert_eq!(rows(&buf.snapshot(Table::Deliveries)), 2);
        assert_eq!(buf.rows(), 2);
    }

    #[test]
    fn large_bodies_freeze_chunks_by_bytes_long_before_arrow_overflows() {
        let mut buf = Buffer::default();
        let mut d = sample_delivery();
        d.body = StoredBody::Text("x".repeat(3 << 20));
        for seq in 1..=40 {
            buf.push_delivery(seq, &d, D);
        }
        // 120 MiB of bodies: frozen by bytes as they came, not held in one builder.
        let chunks = &buf.deliveries.chunks;
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        for c in chunks {
            let body = c.batch.column_by_name("body").unwrap();
            let bytes = body.as_string::<i32>().value_data().len();
            assert!(
                bytes <= CHUNK_BYTES + (3 << 20),
                "a chunk holds {bytes} bytes of bodies"
            );
        }
        assert_eq!(rows(&buf.snapshot(Table::Deliveries)), 40);
    }

    #[test]
    fn chunks_frozen_early_give_back_what_was_reserved_for_a_full_one() {
        let mut buf = Buffer::default();
        let mut d = sample_delivery();
        d.body = StoredBody::Text("x".repeat(8 << 10));
        let mut seq = 0;
        // Fill one chunk: the next is sized like it (tens of MiB for the bodies).
        while buf.deliveries.chunks.is_empty() {
            seq += 1;
            buf.push_delivery(seq, &d, D);
        }
        // Then a query snapshots every few rows, as a busy dashboard would.
        for _ in 0..20 {
            for _ in 0..10 {
                seq += 1;
                buf.push_delivery(seq, &d, D);
            }
            let _ = buf.snapshot(Table::Deliveries);
        }
        let held: usize = (buf.deliveries.chunks.iter())
            .map(|c| c.batch.get_array_memory_size())
            .sum();
        assert!(
            held < CHUNK_BYTES * 3 / 2,
            "{} MiB held for one full chunk and 200 rows",
            held >> 20
        );
        assert_eq!(rows(&buf.snapshot(Table::Deliveries)), seq as usize);
    }

    #[test]
    fn binary_bodies_are_stored_base64() {
        let mut buf = Buffer::default();
        let mut d = sample_delivery();
        d.body = StoredBody::Binary(vec![0xff, 0x00, 0x10]);
        buf.push_delivery(1, &d, D);
        let batch = &buf.snapshot(Table::Deliveries)[0];
        let b64 = batch
            .column_by_name("body_base64")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert_eq!(b64.value(0), "/wAQ");
        assert!(batch.column_by_name("body").unwrap().is_null(0));
    }
}
