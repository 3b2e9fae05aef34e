//! Each simulated request passes hookscope's own verification of its provider with
//! the demo secret, and is identified as that provider's event.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::*;
use crate::ingest::body_json::BodyJson;
use crate::ingest::providers::{self, RequestView};
use crate::model::SignatureStatus;

#[test]
fn every_sender_signs_as_its_provider_does() {
    let mut rng = StdRng::seed_from_u64(7);
    let sources = demo_sources();
    for (i, s) in SENDERS.iter().enumerate() {
        for (n, event_type) in s.events.iter().enumerate() {
            let id = format!("evt_{i}{n}0000000000000000000000");
            let body = body_of(&mut rng, s, event_type, &id, 1_733_400_000);
            let event = Event {
                sender: i,
                event_type,
                id: id.clone(),
                body,
                attempt: 1 + n as u32 % 2,
            };
            let now = chrono::Utc::now().timestamp();
            let req = sign(&event, now, "d-1");
            let mut headers = HeaderMap::new();
            for (k, v) in &req.headers {
                headers.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            assert_eq!(providers::detect(&headers).name, s.provider, "{}", s.source);
            let json = BodyJson::parse(req.body.as_bytes()).ok();
            let view = RequestView {
                method: "POST",
                path: "/webhook/x",
                query: "",
                headers: &headers,
                body: req.body.as_bytes(),
                json: json.as_ref(),
                public_base: None,
                received_at_us: now * 1_000_000,
            };
            let provider = providers::by_name(s.provider).unwrap();
            let source = sources.iter().find(|c| c.name == s.source).unwrap();
            assert_eq!(
                provider.verify(&view, source).status,
                SignatureStatus::Valid,
                "{} {event_type}",
                s.source
            );
            let mut wrong = source.clone();
            wrong.secret = Secrets(vec!["not the secret".into()]);
            assert_eq!(
                provider.verify(&view, &wrong).status,
                SignatureStatus::Invalid,
                "{}",
                s.source
            );
            let identity = provider.identify(&view);
            assert!(identity.event_id.is_some(), "{}: no event id", s.source);
            let seen = identity.event_type.unwrap_or_default();
            assert_eq!(seen, *event_type, "{}", s.source);
        }
    }
}

#[test]
fn profiles_shape_the_weights() {
    let stripe = 0;
    let github = 1;
    assert_eq!(
        weight(stripe, 0.5, Profile::Spike),
        SENDERS[stripe].weight * 10.0
    );
    assert_eq!(weight(stripe, 0.1, Profile::Spike), SENDERS[stripe].weight);
    assert_eq!(weight(github, 0.5, Profile::Outage), 0.0);
    assert_eq!(weight(github, 0.2, Profile::Outage), SENDERS[github].weight);
    assert!("nope".parse::<Profile>().is_err());
}
