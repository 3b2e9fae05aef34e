//! Twilio: `X-Twilio-Signature: <base64>` of HMAC-SHA1(auth token, full URL + each form
//! parameter's name and value, sorted by name). JSON bodies are signed through the URL:
//! it carries `bodySHA256=<hex sha256 of the body>`, which must match.
//!
//! The URL is the one Twilio requested: `public_url` from the source config when set
//! (behind a proxy the server sees another URL), else rebuilt from
//! `X-Forwarded-Proto`/`Host` and the path. Like Twilio's own libraries, the URL is
//! tried with and without the scheme's default port.

use super::sig::{self, Algo};
use super::{Identity, Provider, RequestView, Verification};
use crate::config::SourceConfig;
use crate::ingest::receive::is_json_content_type;
use crate::model::SignatureStatus;

pub(crate) struct Twilio;

fn is_form(req: &RequestView<'_>) -> bool {
    req.header("content-type").is_some_and(|ct| {
        ct.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    })
}

/// The URL Twilio signed, and its variant with the default port added or removed.
fn signed_urls(req: &RequestView<'_>, source: &SourceConfig) -> Vec<String> {
    let base = match &source.public_url {
        Some(url) => url.trim_end_matches('?').to_string(),
        None => match req.public_base {
            Some(b) => format!("{b}{}", req.path),
            None => return Vec::new(),
        },
    };
    let url = if req.query.is_empty() {
        base
    } else {
        format!("{base}?{}", req.query)
    };
    let mut out = vec![url.clone()];
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let default = if scheme == "https" { "443" } else { "80" };
        match authority.rsplit_once(':') {
            Some((host, port)) if port == default => out.push(format!("{scheme}://{host}{tail}")),
            Some(_) => {}
            None => out.push(format!("{scheme}://{authority}:{default}{tail}")),
        }
    }
    out
}

/// `name1value1name2value2…` of the form body, sorted by name (then value).
fn sorted_params(body: &[u8]) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.sort();
    pairs.into_iter().map(|(k, v)| k + &v).collect()
}

/// Twilio's signature of `url` (+ sorted form `params`) under `token`.
pub fn signature(token: &[u8], url: &str, params: &str) -> Vec<u8> {
    sig::hmac(Algo::Sha1, token, &[url.as_bytes(), params.as_bytes()])
}

impl Provider for Twilio {
    fn signs_the_url(&self) -> bool {
        true
    }

    fn identify(&self, req: &RequestView<'_>) -> Identity {
        let mut event_type = None;
        if is_form(req) {
            for (k, v) in form_urlencoded::parse(req.body) {
                let t = match k.as_ref() {
                    "CallStatus" => format!("call.{v}"),
                    "MessageStatus" | "SmsStatus" => format!("message.{v}"),
                    "EventType" => v.into_owned(),
                    _ => continue,
                };
                event_type = Some(t);
                break;
            }
        } else if let Some(json) = req.json {
            let first = json.index(0).unwrap_or_else(|| json.clone());
            event_type = first.get("type").and_then(|t| t.string());
        }
        Identity {
            event_type,
            event_id: req.header("i-twilio-idempotency-token").map(str::to_string),
            ..Identity::default()
        }
    }

    fn verify(&self, req: &RequestView<'_>, source: &SourceConfig) -> Verification {
        let Some(value) = req.header("x-twilio-signature") else {
            return Verification::status(SignatureStatus::Missing);
        };
        let candidates: Vec<Vec<u8>> = sig::b64_decode(value).into_iter().collect();
        let params = if is_form(req) {
            sorted_params(req.body)
        } else {
            String::new()
        };
        let body_ok = if is_form(req) {
            true
        } else {
            // JSON (or other) bodies: the URL's bodySHA256 must be the body's hash.
            let declared = form_urlencoded::parse(req.query.as_bytes())
                .find(|(k, _)| k == "bodySHA256")
                .map(|(_, v)| v.into_owned());
            let actual = sig::sha256_hex(req.body);
            declared
                .is_some_and(|d| sig::ct_eq(d.to_ascii_lowercase().as_bytes(), actual.as_bytes()))
                || (req.body.is_empty()
                    && !req.header("content-type").is_some_and(is_json_content_type))
        };
        let mut ok = false;
        for url in signed_urls(req, source) {
            ok |= sig::any_secret_matches(&source.secret.0, &candidates, |key| {
                signature(key, &url, &params)
            });
        }
        Verification::status(if ok && body_ok {
            SignatureStatus::Valid
        } else {
            SignatureStatus::Invalid
        })
    }
}
