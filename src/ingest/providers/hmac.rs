//! Generic HMAC: a configurable header carries HMAC(secret, body) with a configurable
//! algorithm (`sha1`, `sha256`, `sha512`), encoding (`hex`, `base64`) and optional
//! prefix (`sha256=`).

use super::sig::{self, Algo};
use super::{Provider, RequestView, Verification};
use crate::config::SourceConfig;
use crate::ingest::providers::ConfigProblem;
use crate::model::SignatureStatus;

pub(crate) struct GenericHmac;

struct Settings {
    header: String,
    algo: Algo,
    base64: bool,
    prefix: String,
}

fn settings(source: &SourceConfig) -> Result<Settings, ConfigProblem> {
    let header = source
        .signature_header
        .clone()
        .ok_or_else(|| {
            ConfigProblem(
                "provider \"hmac\" needs signature_header (the header carrying the signature)"
                    .into(),
            )
        })?
        .to_ascii_lowercase();
    let algo = match &source.algorithm {
        Some(a) => Algo::parse(a).ok_or_else(|| {
            ConfigProblem(format!("algorithm {a:?} is not sha1, sha256 or sha512"))
        })?,
        None => Algo::Sha256,
    };
    let base64 = match source
        .encoding
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("hex") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ConfigProblem(format!(
                "encoding {other:?} is not hex or base64"
            )));
        }
    };
    Ok(Settings {
        header,
        algo,
        base64,
        prefix: source.prefix.clone().unwrap_or_default(),
    })
}

impl Provider for GenericHmac {
    fn verify(&self, req: &RequestView<'_>, source: &SourceConfig) -> Verification {
        let Ok(s) = settings(source) else {
            return Verification::status(SignatureStatus::Invalid);
        };
        let Some(value) = req.header(&s.header) else {
            return Verification::status(SignatureStatus::Missing);
        };
        let value = value.trim();
        let value = value.strip_prefix(s.prefix.as_str()).unwrap_or(value);
        let decoded = if s.base64 {
            sig::b64_decode(value)
        } else {
            sig::hex_decode(value)
        };
        let candidates: Vec<Vec<u8>> = decoded.into_iter().collect();
        let ok = sig::any_secret_matches(&source.secret.0, &candidates, |key| {
            sig::hmac(s.algo, key, &[req.body])
        });
        Verification::status(if ok {
            SignatureStatus::Valid
        } else {
            SignatureStatus::Invalid
        })
    }

    fn check_config(&self, source: &SourceConfig) -> Result<(), ConfigProblem> {
        settings(source).map(|_| ())
    }
}
