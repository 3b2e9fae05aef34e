//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>]`, HMAC-SHA256 with the whole
//! `whsec_…` secret as key over `"{t}.{body}"`. Event id and type from the body.

use super::sig::{self, Algo};
use super::{Identity, Provider, RequestView, Verification};
use crate::config::SourceConfig;
use crate::model::SignatureStatus;

pub struct Stripe;

struct Header {
    t: Option<i64>,
    v1: Vec<Vec<u8>>,
}

fn parse(value: &str) -> Header {
    let mut h = Header {
        t: None,
        v1: Vec::new(),
    };
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => h.t = t.trim().parse().ok(),
            Some(("v1", sig)) => h.v1.extend(sig::hex_decode(sig)),
            _ => {}
        }
    }
    h
}

impl Provider for Stripe {
    fn identify(&self, req: &RequestView<'_>) -> Identity {
        let signed_at = req.header("stripe-signature").and_then(|v| parse(v).t);
        let created = req
            .json
            .and_then(|j| j.get("created"))
            .and_then(|v| v.as_i64());
        Identity {
            event_type: req.json_str("type"),
            event_id: req.json_str("id"),
            delivery_id: None,
            sent_at_us: signed_at.or(created).and_then(sig::secs_to_us),
            provider_attempt: None,
        }
    }

    fn verify(&self, req: &RequestView<'_>, source: &SourceConfig) -> Verification {
        let Some(value) = req.header("stripe-signature") else {
            return Verification::status(SignatureStatus::Missing);
        };
        let header = parse(value);
        let Some(t) = header.t else {
            return Verification::status(SignatureStatus::Invalid);
        };
        let ts = t.to_string();
        let ok = sig::any_secret_matches(&source.secret.0, &header.v1, |key| {
            sig::hmac(Algo::Sha256, key, &[ts.as_bytes(), b".", req.body])
        });
        Verification::timed(ok, t, req, source)
    }
}
