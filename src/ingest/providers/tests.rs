//! Published test vectors and per-provider behaviour.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::*;
use crate::config::{Dur, Secrets, SourceConfig};

/// Test bodies live for the test run (a parsed body borrows its bytes).
fn leak(body: &[u8]) -> &'static [u8] {
    Box::leak(body.to_vec().into_boxed_slice())
}

struct Req {
    headers: HeaderMap,
    body: &'static [u8],
    json: Option<BodyJson<'static>>,
    path: &'static str,
    query: &'static str,
    base: Option<&'static str>,
    now_us: i64,
}

impl Req {
    fn new(headers: &[(&str, &str)], body: &[u8], now_secs: i64) -> Self {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let body = leak(body);
        Req {
            headers: map,
            body,
            json: BodyJson::parse(body).ok(),
            path: "/webhook/x",
            query: "",
            base: None,
            now_us: now_secs * 1_000_000,
        }
    }
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: "POST",
            path: self.path,
            query: self.query,
            headers: &self.headers,
            body: self.body,
            json: self.json.as_ref(),
            public_base: self.base,
            received_at_us: self.now_us,
        }
    }
}

fn source(secrets: &[&str]) -> SourceConfig {
    SourceConfig {
        name: "x".into(),
        secret: Secrets(secrets.iter().map(|s| s.to_string()).collect()),
        tolerance: Dur(Duration::from_secs(300)),
        ..SourceConfig::default()
    }
}

fn status(p: &str, req: &Req, src: &SourceConfig) -> SignatureStatus {
    by_name(p).unwrap().verify(&req.view(), src).status
}

#[test]
fn github_published_vector() {
    let req = Req::new(
        &[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )],
        b"Hello, World!",
        0,
    );
    assert_eq!(
        status("github", &req, &source(&["It's a Secret to Everybody"])),
        SignatureStatus::Valid
    );
    assert_eq!(
        status("github", &req, &source(&["wrong"])),
        SignatureStatus::Invalid
    );
    // Rotation: the matching secret may be second.
    assert_eq!(
        status(
            "github",
            &req,
            &source(&["old", "It's a Secret to Everybody"])
        ),
        SignatureStatus::Valid
    );
}

#[test]
fn standard_webhooks_published_vector() {
    let req = Req::new(
        &[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ],
        br#"{"test": 2432232314}"#,
        1614265330 + 10,
    );
    let src = source(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
    assert_eq!(status("standard", &req, &src), SignatureStatus::Valid);
    let late = Req {
        now_us: (1614265330 + 3600) * 1_000_000,
        ..req
    };
    assert_eq!(status("standard", &late, &src), SignatureStatus::Expired);
    let early = Req {
        now_us: (1614265330 - 3600) * 1_000_000,
        ..late
    };
    assert_eq!(
        status("standard", &early, &src),
        SignatureStatus::Expired,
        "too far in the future"
    );
    let id = by_name("standard").unwrap().identify(&early.view());
    assert_eq!(id.event_id.as_deref(), Some("msg_p5jXN8AQM9LWM0D4loKWxJek"));
    assert_eq!(id.sent_at_us, Some(1614265330 * 1_000_000));
}

const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";

#[test]
fn slack_published_vector() {
    let req = Req::new(
        &[
            ("x-slack-request-timestamp", "1531420618"),
            (
                "x-slack-signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            ),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        SLACK_BODY.as_bytes(),
        1531420618 + 5,
    );
    let src = source(&["8f742231b10e8888abcd99yyyzzz85a5"]);
    assert_eq!(status("slack", &req, &src), SignatureStatus::Valid);
    let id = by_name("slack").unwrap().identify(&req.view());
    assert_eq!(id.event_type.as_deref(), Some("slash_command"));
    let stale = Req {
        now_us: (1531420618 + 301) * 1_000_000,
        ..req
    };
    assert_eq!(status("slack", &stale, &src), SignatureStatus::Expired);
}

#[test]
fn twilio_published_vector() {
    let sig = twilio::signature(
        b"12345",
        "https://mycompany.com/myapp.php?foo=1&bar=2",
        "CallSidCA1234567890ABCDECaller+12349013030Digits1234From+12349013030To+18005551212",
    );
    assert_eq!(sig::b64_encode(&sig), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    // Through the provider: form body, URL from public_url, parameters in any order.
    let body = "To=%2B18005551212&From=%2B12349013030&Digits=1234&Caller=%2B12349013030&CallSid=CA1234567890ABCDE";
    let mut req = Req::new(
        &[
            ("x-twilio-signature", "0/KCTR6DLpKmkAf8muzZqo1nDgQ="),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
        0,
    );
    req.query = "foo=1&bar=2";
    let mut src = source(&["12345"]);
    src.public_url = Some("https://mycompany.com/myapp.php".into());
    assert_eq!(status("twilio", &req, &src), SignatureStatus::Valid);
    // Without public_url the URL is rebuilt from the forwarded scheme and host.
    src.public_url = None;
    req.path = "/myapp.php";
    req.base = Some("https://mycompany.com:443");
    assert_eq!(
        status("twilio", &req, &src),
        SignatureStatus::Valid,
        "default port dropped"
    );
    req.base = Some("https://elsewhere.example");
    assert_eq!(status("twilio", &req, &src), SignatureStatus::Invalid);
}

#[test]
fn detection_recognises_each_provider_by_its_headers() {
    for (header, name) in [
        ("stripe-signature", "stripe"),
        ("x-github-event", "github"),
        ("x-shopify-topic", "shopify"),
        ("x-slack-signature", "slack"),
        ("x-twilio-signature", "twilio"),
        ("paypal-transmission-id", "paypal"),
        ("sentry-hook-resource", "sentry"),
    ] {
        let req = Req::new(&[(header, "x")], b"", 0);
        assert_eq!(detect(&req.headers).name, name, "{header}");
    }
    let svix = Req::new(&[("svix-id", "m"), ("svix-signature", "v1,x")], b"", 0);
    assert_eq!(detect(&svix.headers).name, "svix");
    let standard = Req::new(
        &[("webhook-id", "m"), ("webhook-signature", "v1,x")],
        b"",
        0,
    );
    assert_eq!(detect(&standard.headers).name, "standard");
    assert_eq!(detect(&Req::new(&[], b"", 0).headers).name, "generic");
}

#[test]
fn generic_hmac_follows_its_settings() {
    let body = b"{\"a\":1}";
    let mac = sig::hmac(sig::Algo::Sha512, b"k", &[body]);
    let mut src = source(&["k"]);
    src.provider = Some("hmac".into());
    src.signature_header = Some("X-Acme-Signature".into());
    src.algorithm = Some("sha512".into());
    src.encoding = Some("base64".into());
    src.prefix = Some("sha512=".into());
    let header = format!("sha512={}", sig::b64_encode(&mac));
    let req = Req::new(&[("x-acme-signature", &header)], body, 0);
    assert_eq!(status("hmac", &req, &src), SignatureStatus::Valid);
    let tampered = Req::new(&[("x-acme-signature", &header)], b"{\"a\":2}", 0);
    assert_eq!(status("hmac", &tampered, &src), SignatureStatus::Invalid);
    assert_eq!(
        status("hmac", &Req::new(&[], body, 0), &src),
        SignatureStatus::Missing
    );
    src.algorithm = Some("md5".into());
    assert!(by_name("hmac").unwrap().check_config(&src).is_err());
}

#[test]
fn shared_token_compares_the_header_and_names_it_secret() {
    let mut src = source(&["t0k3n"]);
    src.token_header = Some("X-Notify-Token".into());
    let ok = Req::new(&[("x-notify-token", "t0k3n")], b"", 0);
    assert_eq!(status("token", &ok, &src), SignatureStatus::Valid);
    let bad = Req::new(&[("x-notify-token", "t0k3m")], b"", 0);
    assert_eq!(status("token", &bad, &src), SignatureStatus::Invalid);
    assert_eq!(
        status("token", &Req::new(&[], b"", 0), &src),
        SignatureStatus::Missing
    );
    assert_eq!(
        by_name("token").unwrap().secret_headers(Some(&src)),
        vec!["x-notify-token"]
    );
}

#[test]
fn twilio_json_bodies_are_signed_through_body_sha256_in_the_url() {
    use sha2::Digest;
    let body = br#"[{"type":"com.twilio.messaging.message.delivered","id":"EZ1"}]"#;
    let hash = hex::encode(sha2::Sha256::digest(body));
    let url = format!("https://hooks.example.com/webhook/tw?bodySHA256={hash}");
    let signature = sig::b64_encode(&twilio::signature(b"tok", &url, ""));
    let mut req = Req::new(
        &[
            ("x-twilio-signature", &signature),
            ("content-type", "application/json"),
        ],
        body,
        0,
    );
    let query = format!("bodySHA256={hash}");
    req.query = Box::leak(query.into_boxed_str());
    let mut src = source(&["tok"]);
    src.public_url = Some("https://hooks.example.com/webhook/tw".into());
    assert_eq!(status("twilio", &req, &src), SignatureStatus::Valid);
    let id = by_name("twilio").unwrap().identify(&req.view());
    assert_eq!(
        id.event_type.as_deref(),
        Some("com.twilio.messaging.message.delivered")
    );
    // The same signed URL with another body: the hash no longer matches.
    req.body = br#"[{"type":"forged"}]"#;
    assert_eq!(status("twilio", &req, &src), SignatureStatus::Invalid);
}

#[test]
fn sentry_signature_type_and_ids() {
    use ::hmac::Mac;
    let body = br#"{"action":"created","installation":{"uuid":"i-1"},"data":{"issue":{"id":"1170820242","title":"boom"}}}"#;
    // The signature as Sentry's docs compute it: HMAC-SHA256 of the body, hex.
    let mut mac = ::hmac::Hmac::<sha2::Sha256>::new_from_slice(b"client-secret").unwrap();
    mac.update(body);
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let req = Req::new(
        &[
            ("sentry-hook-resource", "issue"),
            ("sentry-hook-timestamp", "1733400000"),
            ("sentry-hook-signature", &signature),
            ("request-id", "req-7"),
        ],
        body,
        1_733_400_001,
    );
    assert_eq!(detect(&req.headers).name, "sentry");
    assert_eq!(
        status("sentry", &req, &source(&["client-secret"])),
        SignatureStatus::Valid
    );
    assert_eq!(
        status("sentry", &req, &source(&["other"])),
        SignatureStatus::Invalid
    );
    let id = by_name("sentry").unwrap().identify(&req.view());
    assert_eq!(id.event_type.as_deref(), Some("issue.created"));
    assert_eq!(id.event_id.as_deref(), Some("issue:1170820242:created"));
    assert_eq!(id.delivery_id.as_deref(), Some("req-7"));
    assert_eq!(id.sent_at_us, Some(1_733_400_000_000_000));
    let unsigned = Req::new(&[("sentry-hook-resource", "issue")], body, 0);
    assert_eq!(
        status("sentry", &unsigned, &source(&["client-secret"])),
        SignatureStatus::Missing
    );
    // An error event's own id wins.
    let alert = Req::new(
        &[("sentry-hook-resource", "event_alert")],
        br#"{"action":"triggered","data":{"event":{"event_id":"ab12"}}}"#,
        0,
    );
    let id = by_name("sentry").unwrap().identify(&alert.view());
    assert_eq!(id.event_type.as_deref(), Some("event_alert.triggered"));
    assert_eq!(id.event_id.as_deref(), Some("ab12"));
}
