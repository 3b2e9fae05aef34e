//! Signature helpers shared by providers: HMACs, decoding, constant-time comparison,
//! timestamp tolerance.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

/// Hash functions used by webhook HMACs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Sha1,
    Sha256,
    Sha512,
}

impl Algo {
    pub fn parse(s: &str) -> Option<Algo> {
        match s.to_ascii_lowercase().replace('-', "").as_str() {
            "sha1" => Some(Algo::Sha1),
            "sha256" => Some(Algo::Sha256),
            "sha512" => Some(Algo::Sha512),
            _ => None,
        }
    }
}

/// HMAC of the concatenation of `parts` under `key`.
pub fn hmac(algo: Algo, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac =
            <M as hmac::digest::KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match algo {
        Algo::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
        Algo::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
        Algo::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
    }
}

/// Constant-time equality (length is not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The SHA-256 of `bytes` as 64 lower-case hex digits. (`hex::encode` goes through a
/// `char` iterator; every delivery pays for this.)
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(bytes);
    let mut out = [0u8; 64];
    // 32 bytes always fit 64 digits, and hex digits are ASCII: neither step can fail.
    let _ = hex::encode_to_slice(digest, &mut out);
    std::str::from_utf8(&out)
        .map(str::to_owned)
        .unwrap_or_default()
}

pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    hex::decode(s.trim()).ok()
}

pub(crate) fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
        .ok()
}

#[cfg(test)]
pub(crate) fn b64_encode(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// True if any secret's MAC equals any candidate signature, compared in constant time.
/// Every pair is compared, so timing does not depend on which one matched.
pub(crate) fn any_secret_matches(
    secrets: &[String],
    candidates: &[Vec<u8>],
    mac: impl Fn(&[u8]) -> Vec<u8>,
) -> bool {
    let mut matched = false;
    for secret in secrets {
        let expected = mac(secret.as_bytes());
        for c in candidates {
            matched |= ct_eq(&expected, c);
        }
    }
    matched
}

/// The status of a signature that is an `algo` HMAC of the body alone, given its
/// decoded candidates (GitHub, Shopify, Sentry).
pub(crate) fn body_hmac_status(
    algo: Algo,
    candidates: &[Vec<u8>],
    body: &[u8],
    source: &crate::config::SourceConfig,
) -> super::Verification {
    let ok = any_secret_matches(&source.secret.0, candidates, |key| hmac(algo, key, &[body]));
    super::Verification::status(if ok {
        crate::model::SignatureStatus::Valid
    } else {
        crate::model::SignatureStatus::Invalid
    })
}

/// True if `signed_at_secs` is within `tolerance` of `now_us`, in either direction.
pub(crate) fn within_tolerance(signed_at_secs: i64, now_us: i64, tolerance: Duration) -> bool {
    let skew_us = (now_us - signed_at_secs.saturating_mul(1_000_000)).unsigned_abs();
    skew_us <= tolerance.as_micros() as u64
}

/// Seconds since the epoch as microseconds.
pub(crate) fn secs_to_us(secs: i64) -> Option<i64> {
    secs.checked_mul(1_000_000)
}

/// An RFC 3339 time as microseconds since the epoch.
pub(crate) fn rfc3339_us(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac(
            Algo::Sha256,
            b"Jefe",
            &[b"what do ya want ", b"for nothing?"],
        );
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sha256_hex_is_the_lower_case_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_hex(b"").len(), 64);
    }

    #[test]
    fn comparison_needs_equal_bytes() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn tolerance_is_symmetric() {
        let now = 1_000_000 * 1_000_000;
        assert!(within_tolerance(
            1_000_000 - 299,
            now,
            Duration::from_secs(300)
        ));
        assert!(!within_tolerance(
            1_000_000 - 301,
            now,
            Duration::from_secs(300)
        ));
        assert!(!within_tolerance(
            1_000_000 + 301,
            now,
            Duration::from_secs(300)
        ));
    }
}
