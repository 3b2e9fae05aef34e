//! Svix: the Standard Webhooks scheme with `svix-id`, `svix-timestamp` and
//! `svix-signature` headers (see [`super::standard`]).

pub(crate) use super::standard::Scheme;

/// The Svix provider.
pub const SVIX: Scheme = Scheme::SVIX;
