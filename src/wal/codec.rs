//! WAL records ⇄ bytes: each [`Entry`] kind has a versioned, length-prefixed
//! little-endian layout.
//!
//! Invariants: a new layout gets a new kind and old kinds stay decodable; decoding a
//! kind this build does not know is an error, never a guess; `size_hint` is at least
//! the encoded size, so encoding allocates once.

use thiserror::Error;

use crate::model::{
    AlertRow, Delivery, Entry, ForwardResult, Outcome, QueryRun, SignatureStatus, StoredBody,
};

/// WAL record kinds. A new layout gets a new kind; old kinds stay decodable.
pub mod kind {
    pub const DELIVERY_V1: u8 = 1;
    pub const OUTCOME_V1: u8 = 2;
    pub const FORWARD_START_V1: u8 = 3;
    pub const FORWARD_DONE_V1: u8 = 4;
    pub const OUTCOMES_V1: u8 = 5;
    pub const QUERY_RUN_V1: u8 = 6;
    pub const ALERT_V1: u8 = 7;
}

/// A WAL payload that cannot be decoded.
#[derive(Debug, Error, PartialEq)]
pub enum DecodeError {
    #[error("record ends early while reading {0}")]
    Truncated(&'static str),
    #[error("record field {0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("record field {0} has an impossible value {1}")]
    BadValue(&'static str, u64),
    #[error(
        "unknown WAL record kind {0}: the WAL was written by a newer hookscope; run that version or move the WAL aside"
    )]
    UnknownKind(u8),
    #[error("record has {0} bytes left over after decoding")]
    Trailing(usize),
}

impl Entry {
    /// The WAL record kind for this entry.
    pub fn kind(&self) -> u8 {
        match self {
            Entry::Delivery(_) => kind::DELIVERY_V1,
            Entry::Outcome(_) => kind::OUTCOME_V1,
            Entry::ForwardStart(_) => kind::FORWARD_START_V1,
            Entry::ForwardDone(_) => kind::FORWARD_DONE_V1,
            Entry::Outcomes(_) => kind::OUTCOMES_V1,
            Entry::QueryRun(_) => kind::QUERY_RUN_V1,
            Entry::Alert(_) => kind::ALERT_V1,
        }
    }

    /// Encodes the entry as a WAL payload (the framing is the WAL's job).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(self.size_hint());
        match self {
            Entry::Delivery(d) | Entry::ForwardStart(d) => encode_delivery(&mut e, d),
            Entry::Outcome(o) => encode_outcome(&mut e, o),
            Entry::ForwardDone(r) => encode_forward_result(&mut e, r),
            Entry::QueryRun(r) => encode_query_run(&mut e, r),
            Entry::Alert(a) => encode_alert(&mut e, a),
            Entry::Outcomes(list) => {
                e.i64(list.len() as i64);
                for o in list {
                    encode_outcome(&mut e, o);
                }
            }
        }
        e.buf
    }

    /// Decodes a payload written by [`Entry::encode`] under `kind`.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Entry, DecodeError> {
        let mut d = Decoder { buf: payload };
        let entry = match kind {
            kind::DELIVERY_V1 => Entry::Delivery(Box::new(decode_delivery(&mut d)?)),
            kind::OUTCOME_V1 => Entry::Outcome(Box::new(decode_outcome(&mut d)?)),
            kind::FORWARD_START_V1 => Entry::ForwardStart(Box::new(decode_delivery(&mut d)?)),
            kind::FORWARD_DONE_V1 => Entry::ForwardDone(Box::new(decode_forward_result(&mut d)?)),
            kind::QUERY_RUN_V1 => Entry::QueryRun(Box::new(decode_query_run(&mut d)?)),
            kind::ALERT_V1 => Entry::Alert(Box::new(decode_alert(&mut d)?)),
            kind::OUTCOMES_V1 => {
                let n = d.i64("outcomes")?;
                // Each outcome takes at least a byte per field: a count the payload
                // cannot hold is corruption, not a reason to allocate.
                let n = usize::try_from(n)
                    .ok()
                    .filter(|n| *n <= d.buf.len())
                    .ok_or(DecodeError::BadValue("outcomes", n as u64))?;
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    list.push(decode_outcome(&mut d)?);
                }
                Entry::Outcomes(list)
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        if !d.buf.is_empty() {
            return Err(DecodeError::Trailing(d.buf.len()));
        }
        Ok(entry)
    }

    /// At least the encoded size (for deliveries: checked by a test), so that
    /// [`Entry::encode`] allocates once.
    fn size_hint(&self) -> usize {
        const FRAMING: usize = 30 * 9;
        match self {
            Entry::Delivery(d) | Entry::ForwardStart(d) => {
                let body = match &d.body {
                    StoredBody::Text(t) => t.len(),
                    StoredBody::Binary(b) => b.len(),
                    StoredBody::Omitted => 0,
                };
                let strings: usize = [
                    &d.id,
                    &d.source,
                    &d.provider,
                    &d.dedup_key,
                    &d.method,
                    &d.path,
                    &d.query,
                    &d.headers_json,
                    &d.payload_sha256,
                ]
                .iter()
                .map(|s| s.len())
                .sum();
                let options: usize = [
                    &d.event_type,
                    &d.event_id,
                    &d.delivery_id,
                    &d.content_type,
                    &d.user_agent,
                    &d.remote_addr,
                    &d.payload_issues,
                    &d.upstream_error,
                ]
                .iter()
                .map(|s| s.as_deref().map_or(0, str::len))
                .sum();
                // Framing: 30 fields of at most 9 bytes each (a flag and a number or
                // a length). Exact enough that encoding never grows the buffer.
                FRAMING + body + strings + options
            }
            Entry::Outcome(o) => outcome_size_hint(o),
            Entry::Outcomes(list) => 8 + list.iter().map(outcome_size_hint).sum::<usize>(),
            Entry::ForwardDone(_) => 128,
            Entry::QueryRun(r) => 96 + r.name.len() + r.error.as_ref().map_or(0, String::len),
            Entry::Alert(a) => 128 + a.rule.len() + a.message.len() + a.details.len() + a.key.len(),
        }
    }
}

fn outcome_size_hint(o: &Outcome) -> usize {
    256 + o.attributes.len()
        + o.error_message.as_deref().map_or(0, str::len)
        + o.error_type.as_deref().map_or(0, str::len)
        + o.event_id.as_deref().map_or(0, str::len)
        + o.delivery_id.as_deref().map_or(0, str::len)
}

fn encode_forward_result(e: &mut Encoder, r: &ForwardResult) {
    e.str(&r.id);
    e.i64(r.completed_at_us);
    e.i64(i64::from(r.status_code));
    e.opt_i64(r.upstream_status.map(i64::from));
    e.opt_f64(r.upstream_latency_ms);
    e.opt_str(r.upstream_error.as_deref());
}

fn decode_forward_result(d: &mut Decoder<'_>) -> Result<ForwardResult, DecodeError> {
    Ok(ForwardResult {
        id: d.str("id")?,
        completed_at_us: d.i64("completed_at")?,
        status_code: d.i32("status_code")?,
        upstream_status: d.opt_i32("upstream_status")?,
        upstream_latency_ms: d.opt_f64("upstream_latency_ms")?,
        upstream_error: d.opt_str("upstream_error")?,
    })
}

fn encode_delivery(e: &mut Encoder, d: &Delivery) {
    e.str(&d.id);
    e.i64(d.received_at_us);
    e.str(&d.source);
    e.str(&d.provider);
    e.opt_str(d.event_type.as_deref());
    e.opt_str(d.event_id.as_deref());
    e.opt_str(d.delivery_id.as_deref());
    e.str(&d.dedup_key);
    e.opt_i64(d.provider_attempt.map(i64::from));
    e.opt_i64(d.sent_at_us);
    e.u8(d.signature_status.code());
    e.str(&d.method);
    e.str(&d.path);
    e.str(&d.query);
    e.opt_str(d.content_type.as_deref());
    e.opt_str(d.user_agent.as_deref());
    e.opt_str(d.remote_addr.as_deref());
    e.str(&d.headers_json);
    match &d.body {
        StoredBody::Text(t) => {
            e.u8(0);
            e.str(t);
        }
        StoredBody::Binary(b) => {
            e.u8(1);
            e.bytes(b);
        }
        StoredBody::Omitted => e.u8(2),
    }
    e.i64(d.payload_size);
    e.str(&d.payload_sha256);
    e.opt_str(d.payload_issues.as_deref());
    e.i64(i64::from(d.status_code));
    e.opt_i64(d.upstream_status.map(i64::from));
    e.opt_f64(d.upstream_latency_ms);
    e.opt_str(d.upstream_error.as_deref());
}

fn decode_delivery(d: &mut Decoder<'_>) -> Result<Delivery, DecodeError> {
    Ok(Delivery {
        id: d.str("id")?,
        received_at_us: d.i64("received_at")?,
        source: d.str("source")?,
        provider: d.str("provider")?,
        event_type: d.opt_str("event_type")?,
        event_id: d.opt_str("event_id")?,
        delivery_id: d.opt_str("delivery_id")?,
        dedup_key: d.str("dedup_key")?,
        provider_attempt: d.opt_i32("provider_attempt")?,
        sent_at_us: d.opt_i64("sent_at")?,
        signature_status: SignatureStatus::from_code(d.u8("signature_status")?)?,
        method: d.str("method")?,
        path: d.str("path")?,
        query: d.str("query")?,
        content_type: d.opt_str("content_type")?,
        user_agent: d.opt_str("user_agent")?,
        remote_addr: d.opt_str("remote_addr")?,
        headers_json: d.str("headers")?,
        body: match d.u8("body")? {
            0 => StoredBody::Text(d.str("body")?),
            1 => StoredBody::Binary(d.bytes("body")?.to_vec()),
            2 => StoredBody::Omitted,
            other => return Err(DecodeError::BadValue("body", u64::from(other))),
        },
        payload_size: d.i64("payload_size")?,
        payload_sha256: d.str("payload_sha256")?,
        payload_issues: d.opt_str("payload_issues")?,
        status_code: d.i32("status_code")?,
        upstream_status: d.opt_i32("upstream_status")?,
        upstream_latency_ms: d.opt_f64("upstream_latency_ms")?,
        upstream_error: d.opt_str("upstream_error")?,
    })
}

fn encode_alert(e: &mut Encoder, a: &AlertRow) {
    e.i64(a.fired_at_us);
    e.str(&a.rule);
    e.opt_str(a.source.as_deref());
    e.str(&a.severity);
    e.str(&a.message);
    e.str(&a.details);
    e.opt_i64(a.resolved_at_us);
    e.str(&a.key);
    e.str(&a.state);
    e.i64(a.notified_at_us);
}

fn decode_alert(d: &mut Decoder<'_>) -> Result<AlertRow, DecodeError> {
    Ok(AlertRow {
        fired_at_us: d.i64("fired_at")?,
        rule: d.str("rule")?,
        source: d.opt_str("source")?,
        severity: d.str("severity")?,
        message: d.str("message")?,
        details: d.str("details")?,
        resolved_at_us: d.opt_i64("resolved_at")?,
        key: d.str("key")?,
        state: d.str("state")?,
        notified_at_us: d.i64("notified_at")?,
    })
}

fn encode_query_run(e: &mut Encoder, r: &QueryRun) {
    e.str(&r.name);
    e.i64(r.scheduled_for_us);
    e.i64(r.started_at_us);
    e.opt_f64(Some(r.duration_ms));
    e.i64(r.rows);
    e.opt_str(r.error.as_deref());
    e.str(&r.trigger);
}

fn decode_query_run(d: &mut Decoder<'_>) -> Result<QueryRun, DecodeError> {
    Ok(QueryRun {
        name: d.str("name")?,
        scheduled_for_us: d.i64("scheduled_for")?,
        started_at_us: d.i64("started_at")?,
        duration_ms: d.opt_f64("duration_ms")?.unwrap_or(0.0),
        rows: d.i64("rows")?,
        error: d.opt_str("error")?,
        trigger: d.str("trigger")?,
    })
}

fn encode_outcome(e: &mut Encoder, o: &Outcome) {
    e.str(&o.id);
    e.i64(o.reported_at_us);
    e.str(&o.source);
    e.opt_str(o.delivery_id.as_deref());
    e.opt_str(o.event_id.as_deref());
    e.str(&o.status);
    e.opt_f64(o.processing_time_ms);
    e.opt_str(o.error_type.as_deref());
    e.opt_str(o.error_message.as_deref());
    e.opt_i64(o.records_processed);
    e.str(&o.attributes);
}

fn decode_outcome(d: &mut Decoder<'_>) -> Result<Outcome, DecodeError> {
    Ok(Outcome {
        id: d.str("id")?,
        reported_at_us: d.i64("reported_at")?,
        source: d.str("source")?,
        delivery_id: d.opt_str("delivery_id")?,
        event_id: d.opt_str("event_id")?,
        status: d.str("status")?,
        processing_time_ms: d.opt_f64("processing_time_ms")?,
        error_type: d.opt_str("error_type")?,
        error_message: d.opt_str("error_message")?,
        records_processed: d.opt_i64("records_processed")?,
        attributes: d.str("attributes")?,
    })
}

/// Little-endian, length-prefixed field encoder.
struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(v);
    }
    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }
    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(x) => {
                self.u8(1);
                self.i64(x);
            }
            None => self.u8(0),
        }
    }
    fn opt_f64(&mut self, v: Option<f64>) {
        self.opt_i64(v.map(|f| f.to_bits() as i64));
    }
}

struct Decoder<'a> {
    buf: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(field));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }
    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }
    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        let v = self.i64(field)?;
        i32::try_from(v).map_err(|_| DecodeError::BadValue(field, v as u64))
    }
    fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let b = self.take(4, field)?;
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        self.take(n, field)
    }
    fn str(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes(field)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Utf8(field))
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::BadValue(field, u64::from(other))),
        }
    }
    fn opt_str(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        if self.flag(field)? {
            self.str(field).map(Some)
        } else {
            Ok(None)
        }
    }
    fn opt_i64(&mut self, field: &'static str) -> Result<Option<i64>, DecodeError> {
        if self.flag(field)? {
            self.i64(field).map(Some)
        } else {
            Ok(None)
        }
    }
    fn opt_i32(&mut self, field: &'static str) -> Result<Option<i32>, DecodeError> {
        match self.opt_i64(field)? {
            Some(v) => i32::try_from(v)
                .map(Some)
                .map_err(|_| DecodeError::BadValue(field, v as u64)),
            None => Ok(None),
        }
    }
    fn opt_f64(&mut self, field: &'static str) -> Result<Option<f64>, DecodeError> {
        Ok(self.opt_i64(field)?.map(|b| f64::from_bits(b as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::sample_delivery;

    #[test]
    fn delivery_round_trips_through_the_wal_encoding() {
        let mut d = sample_delivery();
        let e = Entry::Delivery(Box::new(d.clone()));
        assert_eq!(Entry::decode(e.kind(), &e.encode()), Ok(e));
        d.body = StoredBody::Binary(vec![0, 159, 146, 150]);
        let e = Entry::Delivery(Box::new(d));
        assert_eq!(Entry::decode(e.kind(), &e.encode()), Ok(e));
    }

    #[test]
    fn encoding_a_delivery_allocates_once() {
        let mut d = sample_delivery();
        d.dedup_key = "k".repeat(200);
        d.user_agent = Some("u".repeat(300));
        d.upstream_error = Some("e".repeat(300));
        d.event_id = Some("v".repeat(100));
        for e in [
            Entry::Delivery(Box::new(sample_delivery())),
            Entry::ForwardStart(Box::new(d)),
        ] {
            let buf = e.encode();
            assert!(
                e.size_hint() >= buf.len(),
                "{} < {}",
                e.size_hint(),
                buf.len()
            );
            assert_eq!(buf.capacity(), e.size_hint(), "the buffer never grew");
        }
    }

    #[test]
    fn alerts_round_trip_through_the_wal_encoding() {
        for resolved in [None, Some(1_700_000_600_000_000)] {
            let e = Entry::Alert(Box::new(AlertRow {
                fired_at_us: 1_700_000_000_000_000,
                rule: "traffic_spike".into(),
                source: Some("stripe".into()),
                severity: "warning".into(),
                message: "m".into(),
                details: "{\"deliveries\":40}".into(),
                resolved_at_us: resolved,
                key: "{\"source\":\"stripe\"}".into(),
                state: "firing".into(),
                notified_at_us: 1_700_000_300_000_000,
            }));
            assert_eq!(Entry::decode(e.kind(), &e.encode()), Ok(e));
        }
    }

    #[test]
    fn query_runs_round_trip_through_the_wal_encoding() {
        for error in [None, Some("the query ran past its timeout".to_string())] {
            let e = Entry::QueryRun(Box::new(QueryRun {
                name: "traffic_spike".into(),
                scheduled_for_us: 1_700_000_000_000_000,
                started_at_us: 1_700_000_000_800_000,
                duration_ms: 12.25,
                rows: 3,
                error,
                trigger: "schedule".into(),
            }));
            assert_eq!(Entry::decode(e.kind(), &e.encode()), Ok(e));
        }
    }

    #[test]
    fn outcome_round_trips_through_the_wal_encoding() {
        let e = Entry::Outcome(Box::new(Outcome {
            id: "x".into(),
            reported_at_us: 5,
            source: "s".into(),
            delivery_id: Some("d".into()),
            event_id: None,
            status: "failure".into(),
            processing_time_ms: Some(12.5),
            error_type: Some("timeout".into()),
            error_message: None,
            records_processed: Some(3),
            attributes: "{}".into(),
        }));
        assert_eq!(Entry::decode(e.kind(), &e.encode()), Ok(e));
    }

    #[test]
    fn a_batch_of_outcomes_is_one_record() {
        let one = |i: i64| Outcome {
            id: format!("o{i}"),
            reported_at_us: i,
            source: "s".into(),
            delivery_id: None,
            event_id: Some(format!("e{i}")),
            status: "success".into(),
            processing_time_ms: None,
            error_type: None,
            error_message: Some("m".repeat(300)),
            records_processed: Some(i),
            attributes: "{}".into(),
        };
        let e = Entry::Outcomes((0..50).map(one).collect());
        let bytes = e.encode();
        assert_eq!(bytes.capacity(), e.size_hint(), "the buffer never grew");
        assert_eq!(Entry::decode(e.kind(), &bytes), Ok(e));
        // A count the payload cannot hold is refused before anything is allocated.
        let mut bad = bytes.clone();
        bad[..8].copy_from_slice(&(1i64 << 40).to_le_bytes());
        assert!(Entry::decode(kind::OUTCOMES_V1, &bad).is_err());
    }

    #[test]
    fn forward_records_round_trip() {
        let e = Entry::ForwardStart(Box::new(sample_delivery()));
        assert_eq!(Entry::decode(e.kind(), &e.encode()), Ok(e));
        let e = Entry::ForwardDone(Box::new(ForwardResult {
            id: "x".into(),
            completed_at_us: 9,
            status_code: 504,
            upstream_status: None,
            upstream_latency_ms: Some(30000.5),
            upstream_error: Some("timeout".into()),
        }));
        assert_eq!(Entry::decode(e.kind(), &e.encode()), Ok(e));
    }

    #[test]
    fn truncated_and_unknown_payloads_are_errors() {
        let e = Entry::Delivery(Box::new(sample_delivery()));
        let bytes = e.encode();
        assert!(matches!(
            Entry::decode(e.kind(), &bytes[..bytes.len() - 3]),
            Err(DecodeError::Truncated(_))
        ));
        assert_eq!(Entry::decode(99, &bytes), Err(DecodeError::UnknownKind(99)));
    }
}
