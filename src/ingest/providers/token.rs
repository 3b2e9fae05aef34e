//! Shared token: a header (default `X-Webhook-Token`, or the source's `token_header`)
//! must equal one of the source's secrets, compared in constant time. The header is a
//! secret itself and is never stored.

use super::sig;
use super::{Provider, RequestView, Verification};
use crate::config::SourceConfig;
use crate::ingest::providers::ConfigProblem;
use crate::model::SignatureStatus;

pub struct Token;

pub(crate) const DEFAULT_HEADER: &str = "x-webhook-token";

fn header_name(source: Option<&SourceConfig>) -> String {
    source
        .and_then(|s| s.token_header.as_deref())
        .unwrap_or(DEFAULT_HEADER)
        .to_ascii_lowercase()
}

impl Provider for Token {
    fn verify(&self, req: &RequestView<'_>, source: &SourceConfig) -> Verification {
        let Some(given) = req.header(&header_name(Some(source))) else {
            return Verification::status(SignatureStatus::Missing);
        };
        let given = given.as_bytes().to_vec();
        let ok = sig::any_secret_matches(&source.secret.0, &[given], |secret| secret.to_vec());
        Verification::status(if ok {
            SignatureStatus::Valid
        } else {
            SignatureStatus::Invalid
        })
    }

    fn check_config(&self, source: &SourceConfig) -> Result<(), ConfigProblem> {
        match &source.token_header {
            Some(h)
                if axum::http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .is_err() =>
            {
                Err(ConfigProblem(format!(
                    "token_header {h:?} is not a valid header name"
                )))
            }
            _ => Ok(()),
        }
    }

    fn secret_headers(&self, source: Option<&SourceConfig>) -> Vec<String> {
        vec![header_name(source)]
    }
}
