//! Providers end to end: signatures computed here with each provider's documented
//! algorithm, posted to the real server.

use std::collections::HashSet;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::{Options, Server};

fn hmac256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

fn hmac1(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

const STRIPE: [&str; 2] = [
    "whsec_test_new_0123456789abcdef",
    "whsec_test_old_fedcba9876543210",
];
const GITHUB: [&str; 2] = ["gh-new-secret", "gh-old-secret"];
const SHOPIFY: [&str; 2] = ["shpss_new", "shpss_old"];
const SLACK: [&str; 2] = ["slack-signing-new", "slack-signing-old"];
// Standard Webhooks / Svix secrets are base64 keys with a whsec_ prefix.
const STANDARD: [&str; 2] = [
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "whsec_c2Vjb25kLXN0YW5kYXJkLWtleS0wMTIzNDU2",
];
const SVIX: [&str; 2] = [
    "whsec_c3ZpeC1rZXktb25lLTAxMjM0NTY3ODlhYmNk",
    "whsec_c3ZpeC1rZXktdHdvLTAxMjM0NTY3ODlhYmNk",
];
const TWILIO: [&str; 2] = ["twilio-auth-token-new", "twilio-auth-token-old"];
const TOKEN: [&str; 2] = ["shared-token-new-9f8e", "shared-token-old-1a2b"];
const ACME: [&str; 2] = ["acme-new", "acme-old"];
const TWILIO_URL: &str = "https://hooks.example.com/webhook/twilio";

fn config() -> String {
    let list = |s: [&str; 2]| format!("[\"{}\", \"{}\"]", s[0], s[1]);
    format!(
        r#"
[[sources]]
name = "stripe"
provider = "stripe"
secret = {stripe}
require_signature = true
required_fields = ["id", "type", "data.object.id"]

[[sources]]
name = "github"
provider = "github"
secret = {github}
require_signature = true

[[sources]]
name = "shopify"
provider = "shopify"
secret = {shopify}
require_signature = true

[[sources]]
name = "slack"
provider = "slack"
secret = {slack}
require_signature = true

[[sources]]
name = "standard"
provider = "standard"
secret = {standard}
require_signature = true

[[sources]]
name = "svix"
provider = "svix"
secret = {svix}
require_signature = true

[[sources]]
name = "twilio"
provider = "twilio"
secret = {twilio}
require_signature = true
public_url = "{TWILIO_URL}"

[[sources]]
name = "notify"
provider = "token"
token_header = "X-Notify-Token"
secret = {token}
require_signature = true

[[sources]]
name = "acme"
provider = "hmac"
signature_header = "X-Acme-Signature"
algorithm = "sha256"
encoding = "hex"
prefix = "sha256="
secret = {acme}
require_signature = true
"#,
        stripe = list(STRIPE),
        github = list(GITHUB),
        shopify = list(SHOPIFY),
        slack = list(SLACK),
        standard = list(STANDARD),
        svix = list(SVIX),
        twilio = list(TWILIO),
        token = list(TOKEN),
        acme = list(ACME),
    )
}

/// A signed request for a provider: (content type, body, headers).
struct Signed {
    content_type: &'static str,
    body: String,
    headers: Vec<(String, String)>,
}

/// Signs `body` as provider `source` would, with `secret`, at unix time `ts`.
fn sign(source: &str, secret: &str, ts: i64, n: u32) -> Signed {
    let json_body = json!({
        "id": format!("evt_{source}_{n}"),
        "type": "invoice.paid",
        "created": ts,
        "data": {"object": {"id": format!("in_{n}"), "amount_paid": 4200}}
    })
    .to_string();
    let h = |k: &str, v: String| (k.to_string(), v);
    match source {
        "stripe" => Signed {
            content_type: "application/json",
            headers: vec![h(
                "stripe-signature",
                format!(
                    "t={ts},v1={}",
                    hex::encode(hmac256(
                        secret.as_bytes(),
                        format!("{ts}.{json_body}").as_bytes()
                    ))
                ),
            )],
            body: json_body,
        },
        "github" => Signed {
            content_type: "application/json",
            headers: vec![
                h("x-github-event", "push".into()),
                h(
                    "x-github-delivery",
                    format!("72d3162e-cc78-11e3-81ab-4c9367dc095{n}"),
                ),
                h("x-github-hook-id", "292430182".into()),
                h(
                    "x-hub-signature-256",
                    format!(
                        "sha256={}",
                        hex::encode(hmac256(secret.as_bytes(), json_body.as_bytes()))
                    ),
                ),
            ],
            body: json_body,
        },
        "shopify" => Signed {
            content_type: "application/json",
            headers: vec![
                h("x-shopify-topic", "orders/create".into()),
                h(
                    "x-shopify-event-id",
                    format!("98880550-7158-44d4-b7cd-2c97c8a091b{n}"),
                ),
                h(
                    "x-shopify-webhook-id",
                    format!("b54557e4-bdd9-4b37-8a5f-bf7d70bcd04{n}"),
                ),
                h(
                    "x-shopify-triggered-at",
                    chrono::DateTime::<chrono::Utc>::from_timestamp(ts, 0)
                        .unwrap()
                        .to_rfc3339(),
                ),
                h(
                    "x-shopify-hmac-sha256",
                    b64(&hmac256(secret.as_bytes(), json_body.as_bytes())),
                ),
            ],
            body: json_body,
        },
        "slack" => {
            let body = json!({
                "token": "x", "team_id": "T1", "type": "event_callback",
                "event_id": format!("Ev0{n}ABCDEF"), "event_time": ts,
                "event": {"type": "app_mention", "text": "hi"}
            })
            .to_string();
            Signed {
                content_type: "application/json",
                headers: vec![
                    h("x-slack-request-timestamp", ts.to_string()),
                    h(
                        "x-slack-signature",
                        format!(
                            "v0={}",
                            hex::encode(hmac256(
                                secret.as_bytes(),
                                format!("v0:{ts}:{body}").as_bytes()
                            ))
                        ),
                    ),
                ],
                body,
            }
        }
        "standard" | "svix" => {
            let prefix = if source == "svix" { "svix" } else { "webhook" };
            let id = format!("msg_{source}_{n}");
            let key = base64::engine::general_purpose::STANDARD
                .decode(secret.trim_start_matches("whsec_"))
                .unwrap();
            let sig = b64(&hmac256(&key, format!("{id}.{ts}.{json_body}").as_bytes()));
            Signed {
                content_type: "application/json",
                headers: vec![
                    h(&format!("{prefix}-id"), id),
                    h(&format!("{prefix}-timestamp"), ts.to_string()),
                    h(&format!("{prefix}-signature"), format!("v1,{sig}")),
                ],
                body: json_body,
            }
        }
        "twilio" => {
            let params = [
                ("MessageSid", format!("SM{n:032}")),
                ("MessageStatus", "delivered".to_string()),
                ("To", "+15551234567".to_string()),
            ];
            let mut sorted = params.to_vec();
            sorted.sort();
            let data: String = std::iter::once(TWILIO_URL.to_string())
                .chain(sorted.iter().map(|(k, v)| format!("{k}{v}")))
                .collect();
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params.iter())
                .finish();
            Signed {
                content_type: "application/x-www-form-urlencoded",
                headers: vec![
                    h(
                        "x-twilio-signature",
                        b64(&hmac1(secret.as_bytes(), data.as_bytes())),
                    ),
                    h("i-twilio-idempotency-token", format!("idem-{n}")),
                ],
                body,
            }
        }
        "notify" => Signed {
            content_type: "application/json",
            headers: vec![h("x-notify-token", secret.to_string())],
            body: json_body,
        },
        "acme" => Signed {
            content_type: "application/json",
            headers: vec![h(
                "x-acme-signature",
                format!(
                    "sha256={}",
                    hex::encode(hmac256(secret.as_bytes(), json_body.as_bytes()))
                ),
            )],
            body: json_body,
        },
        other => panic!("no signer for {other}"),
    }
}

async fn post_signed(
    server: &Server,
    source: &str,
    s: &Signed,
    tamper: bool,
    drop_signature: bool,
) -> (u16, Value) {
    let mut headers: Vec<(&str, &str)> = vec![("content-type", s.content_type)];
    let sig_headers = [
        "stripe-signature",
        "x-hub-signature-256",
        "x-shopify-hmac-sha256",
        "x-slack-signature",
        "webhook-signature",
        "svix-signature",
        "x-twilio-signature",
        "x-notify-token",
        "x-acme-signature",
    ];
    for (k, v) in &s.headers {
        if drop_signature && sig_headers.contains(&k.as_str()) {
            continue;
        }
        // A shared token signs nothing: forging it means sending the wrong token.
        if tamper && source == "notify" && k == "x-notify-token" {
            headers.push((k, "not-the-token"));
            continue;
        }
        headers.push((k, v));
    }
    let body = match (tamper, s.content_type) {
        (false, _) => s.body.clone(),
        (true, "application/x-www-form-urlencoded") => format!("{}&tampered=1", s.body),
        (true, _) => s.body.replacen(':', ": ", 1),
    };
    if tamper {
        assert_ne!(body, s.body);
    }
    server.post(source, &headers, body).await
}

async fn row(server: &Server, id: &str) -> Value {
    let rows = server
        .query(&format!("SELECT * FROM deliveries WHERE id = '{id}'"))
        .await;
    assert_eq!(rows.len(), 1, "delivery {id} is recorded");
    rows[0].clone()
}

const ALL: [(&str, [&str; 2]); 9] = [
    ("stripe", STRIPE),
    ("github", GITHUB),
    ("shopify", SHOPIFY),
    ("slack", SLACK),
    ("standard", STANDARD),
    ("svix", SVIX),
    ("twilio", TWILIO),
    ("notify", TOKEN),
    ("acme", ACME),
];

#[tokio::test(flavor = "multi_thread")]
async fn every_provider_verifies_valid_tampered_missing_and_rotated_signatures() {
    let (server, _dir) = Server::start(Options::default().config(&config()));
    let mut n = 0;
    for (source, secrets) in ALL {
        n += 1;
        let signed = sign(source, secrets[0], now(), n);
        let (status, answer) = post_signed(&server, source, &signed, false, false).await;
        assert_eq!(status, 200, "{source} valid: {answer}");
        let r = row(&server, answer["id"].as_str().unwrap()).await;
        assert_eq!(r["signature_status"], "valid", "{source}");

        let (status, answer) = post_signed(&server, source, &signed, true, false).await;
        assert_eq!(status, 401, "{source} tampered: {answer}");
        let r = row(&server, answer["id"].as_str().unwrap()).await;
        assert_eq!(r["signature_status"], "invalid", "{source} tampered");
        assert_eq!(r["status_code"], 401);

        let (status, answer) = post_signed(&server, source, &signed, false, true).await;
        assert_eq!(status, 401, "{source} unsigned: {answer}");
        let r = row(&server, answer["id"].as_str().unwrap()).await;
        assert_eq!(r["signature_status"], "missing", "{source} unsigned");

        // Rotation: a request signed with the old secret is still accepted.
        n += 1;
        let rotated = sign(source, secrets[1], now(), n);
        let (status, answer) = post_signed(&server, source, &rotated, false, false).await;
        assert_eq!(status, 200, "{source} old secret: {answer}");
    }
    // Every rejected delivery is recorded: 3 per provider.
    let rows = server
        .query("SELECT count(*) AS n FROM deliveries WHERE status_code = 401")
        .await;
    assert_eq!(rows[0]["n"], 2 * ALL.len() as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_timestamps_are_expired() {
    let (server, _dir) = Server::start(Options::default().config(&config()));
    for (i, source) in ["stripe", "slack", "standard", "svix"]
        .into_iter()
        .enumerate()
    {
        let secret = ALL.iter().find(|(s, _)| *s == source).unwrap().1[0];
        let signed = sign(source, secret, now() - 3600, i as u32);
        let (status, answer) = post_signed(&server, source, &signed, false, false).await;
        assert_eq!(status, 401, "{source}: {answer}");
        let r = row(&server, answer["id"].as_str().unwrap()).await;
        assert_eq!(r["signature_status"], "expired", "{source}");
    }
    // Standard Webhooks also refuses timestamps too far in the future.
    let signed = sign("standard", STANDARD[0], now() + 3600, 99);
    let (status, _) = post_signed(&server, "standard", &signed, false, false).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_types_and_times_come_from_each_providers_headers_and_body() {
    let (server, _dir) = Server::start(Options::default().config(&config()));
    let ts = now() - 2;
    let mut got = std::collections::HashMap::new();
    for (source, secrets) in ALL {
        let signed = sign(source, secrets[0], ts, 7);
        let (status, answer) = post_signed(&server, source, &signed, false, false).await;
        assert_eq!(status, 200, "{source}: {answer}");
        got.insert(source, row(&server, answer["id"].as_str().unwrap()).await);
    }
    let expect = |source: &str,
                  provider: &str,
                  event_type: &str,
                  event_id: Option<&str>,
                  delivery_id: Option<&str>| {
        let r = &got[source];
        assert_eq!(r["provider"], provider, "{source}");
        assert_eq!(r["event_type"], event_type, "{source}");
        assert_eq!(r["event_id"].as_str(), event_id, "{source} event_id");
        assert_eq!(
            r["delivery_id"].as_str(),
            delivery_id,
            "{source} delivery_id"
        );
        if let Some(id) = event_id {
            assert_eq!(r["dedup_key"], id, "{source}: dedup_key is the event id");
        } else {
            assert!(
                r["dedup_key"].as_str().unwrap().starts_with("sha256:"),
                "{source}"
            );
        }
    };
    expect(
        "stripe",
        "stripe",
        "invoice.paid",
        Some("evt_stripe_7"),
        None,
    );
    expect(
        "github",
        "github",
        "push",
        Some("292430182:72d3162e-cc78-11e3-81ab-4c9367dc0957"),
        None,
    );
    expect(
        "shopify",
        "shopify",
        "orders/create",
        Some("98880550-7158-44d4-b7cd-2c97c8a091b7"),
        Some("b54557e4-bdd9-4b37-8a5f-bf7d70bcd047"),
    );
    expect("slack", "slack", "app_mention", Some("Ev07ABCDEF"), None);
    expect(
        "standard",
        "standard",
        "invoice.paid",
        Some("msg_standard_7"),
        None,
    );
    expect("svix", "svix", "invoice.paid", Some("msg_svix_7"), None);
    expect(
        "twilio",
        "twilio",
        "message.delivered",
        Some("idem-7"),
        None,
    );
    expect("notify", "token", "invoice.paid", None, None);
    expect("acme", "hmac", "invoice.paid", None, None);
    // Send time and lag where the provider says when it sent.
    for source in ["stripe", "shopify", "slack", "standard", "svix"] {
        let r = &got[source];
        let sent = chrono::DateTime::parse_from_rfc3339(
            r["sent_at"]
                .as_str()
                .unwrap_or_else(|| panic!("{source} sent_at")),
        )
        .unwrap();
        assert_eq!(sent.timestamp(), ts, "{source}");
        let lag = r["delivery_lag_ms"].as_f64().unwrap();
        assert!((1000.0..60_000.0).contains(&lag), "{source} lag {lag}");
    }
    // Required fields are checked for the stripe source.
    assert!(got["stripe"]["payload_issues"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn providers_are_detected_without_config() {
    let (server, _dir) = Server::start(Options::default());
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Value, &'a str);
    let cases: [Case; 4] = [
        (
            "s1",
            vec![("stripe-signature", "t=1,v1=00")],
            json!({"id": "evt_9", "type": "charge.succeeded"}),
            "stripe",
        ),
        (
            "s2",
            vec![
                ("x-github-event", "issues"),
                ("x-github-delivery", "d-1"),
                ("x-github-hook-id", "5"),
            ],
            json!({"action": "opened"}),
            "github",
        ),
        (
            "s3",
            vec![
                ("paypal-transmission-id", "tx-1"),
                ("paypal-transmission-time", "2026-11-22T10:00:00Z"),
            ],
            json!({"id": "WH-1", "event_type": "PAYMENT.CAPTURE.COMPLETED"}),
            "paypal",
        ),
        (
            "s4",
            vec![
                ("svix-id", "msg_1"),
                ("svix-timestamp", "1700000000"),
                ("svix-signature", "v1,AAAA"),
            ],
            json!({"type": "user.created"}),
            "svix",
        ),
    ];
    for (source, headers, body, provider) in cases {
        let mut h = headers.clone();
        h.push(("content-type", "application/json"));
        let (status, answer) = server.post(source, &h, body.to_string()).await;
        assert_eq!(status, 200);
        let r = row(&server, answer["id"].as_str().unwrap()).await;
        assert_eq!(r["provider"], provider);
        assert_eq!(r["signature_status"], "unchecked", "no secret configured");
        assert!(r["event_id"].is_string(), "{provider} event id");
        assert!(r["event_type"].is_string(), "{provider} event type");
    }
    let r = server
        .query("SELECT delivery_id, event_id FROM deliveries WHERE provider = 'paypal'")
        .await;
    assert_eq!(r[0]["delivery_id"], "tx-1");
    assert_eq!(r[0]["event_id"], "WH-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_event_three_times_is_attempts_one_two_three_across_restarts() {
    let (mut server, _dir) = Server::start(Options::default().config(&config()));
    let first = sign("stripe", STRIPE[0], now(), 1);
    assert_eq!(
        post_signed(&server, "stripe", &first, false, false).await.0,
        200
    );
    // Clean restart: the dedup index is rebuilt from Parquet.
    assert!(server.terminate().success());
    server.restart();
    let second = sign("stripe", STRIPE[0], now(), 1); // Stripe re-signs each retry
    let (_, answer) = post_signed(&server, "stripe", &second, false, false).await;
    assert_eq!(answer["duplicate"], true);
    // Crash: the dedup index is rebuilt from the WAL.
    server.kill();
    server.restart();
    let third = sign("stripe", STRIPE[0], now(), 1);
    post_signed(&server, "stripe", &third, false, false).await;
    let rows = server
        .query("SELECT attempt, is_duplicate, retry_gap_ms FROM deliveries WHERE event_id = 'evt_stripe_1' ORDER BY received_at")
        .await;
    let attempts: Vec<i64> = rows
        .iter()
        .map(|r| r["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    assert!(rows[2]["retry_gap_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn slacks_own_retry_number_wins() {
    let (server, _dir) = Server::start(Options::default());
    let body = json!({"type": "event_callback", "event_id": "Ev1", "event": {"type": "message"}})
        .to_string();
    let (_, a) = server
        .post(
            "slack",
            &[
                ("content-type", "application/json"),
                ("x-slack-signature", "v0=00"),
                ("x-slack-retry-num", "2"),
                ("x-slack-retry-reason", "http_timeout"),
            ],
            body,
        )
        .await;
    assert_eq!(a["duplicate"], true);
    let r = row(&server, a["id"].as_str().unwrap()).await;
    assert_eq!(r["attempt"], 3);
    assert_eq!(r["is_duplicate"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_github_delivery_to_two_hooks_is_not_a_duplicate() {
    let (server, _dir) = Server::start(Options::default());
    let body = json!({"zen": "Design for failure."}).to_string();
    for hook in ["111", "222"] {
        let (_, a) = server
            .post(
                "gh",
                &[
                    ("content-type", "application/json"),
                    ("x-github-event", "ping"),
                    ("x-github-delivery", "same-guid"),
                    ("x-github-hook-id", hook),
                ],
                body.clone(),
            )
            .await;
        assert_eq!(a["duplicate"], false, "hook {hook}");
    }
    let (_, a) = server
        .post(
            "gh",
            &[
                ("content-type", "application/json"),
                ("x-github-event", "ping"),
                ("x-github-delivery", "same-guid"),
                ("x-github-hook-id", "111"),
            ],
            body,
        )
        .await;
    assert_eq!(a["duplicate"], true, "a redelivery to the same hook is");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_token_or_authorization_value_is_stored_or_logged() {
    let (server, _dir) = Server::start(
        Options::default()
            .config(&config())
            .env("HOOKSCOPE_LOG", "debug"),
    );
    for (source, secrets) in ALL {
        for (i, secret) in secrets.iter().enumerate() {
            let signed = sign(source, secret, now(), 100 + i as u32);
            let mut headers: Vec<(&str, &str)> = vec![
                ("content-type", signed.content_type),
                ("authorization", "Bearer auth-value-must-not-leak"),
                ("cookie", "session=cookie-value-must-not-leak"),
            ];
            for (k, v) in &signed.headers {
                headers.push((k, v));
            }
            server.post(source, &headers, signed.body.clone()).await;
        }
    }
    let (_, everything) = server.query_raw("SELECT * FROM deliveries", "csv").await;
    let everything = String::from_utf8_lossy(&everything).to_string();
    let log = server.log();
    let mut secrets: Vec<&str> = ALL.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    secrets.extend(["auth-value-must-not-leak", "cookie-value-must-not-leak"]);
    for secret in secrets {
        assert!(
            !everything.contains(secret),
            "{secret} is stored in deliveries"
        );
        assert!(!log.contains(secret), "{secret} is in the server log");
    }
    assert!(everything.contains("[redacted]"));
    assert_eq!(server.count("deliveries").await, 2 * ALL.len() as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_are_recorded_and_linked_to_deliveries() {
    let (server, _dir) = Server::start(Options::default());
    let id = server
        .post_json("app", &json!({"type": "order.paid", "id": "o1"}))
        .await;
    let post = |path: String, body: String| {
        let server = &server;
        async move {
            let resp = server
                .client
                .post(format!("{}{path}", server.url))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (
                status,
                serde_json::from_slice::<Value>(&resp.bytes().await.unwrap()).unwrap(),
            )
        }
    };
    let (status, a) = post(
        "/report/app".into(),
        json!({"delivery_id": id, "status": "success", "processing_time_ms": 42.5, "records_processed": 3, "attributes": {"worker": "w1"}}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["recorded"], 1);
    let (status, a) = post(
        "/report/app".into(),
        json!([{"event_id": "e2", "status": "failure", "error_type": "db", "error_message": "deadlock"}, {"event_id": "e3", "status": "success"}]).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["recorded"], 2);
    // Bad reports name the field; nothing of the batch is recorded.
    let (status, a) = post(
        "/report/app".into(),
        json!([{"status": "success"}, {"status": "done"}]).to_string(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        a["error"].as_str().unwrap().contains("[1]")
            && a["error"].as_str().unwrap().contains("status"),
        "{a}"
    );
    let (status, a) = post(
        "/report/app".into(),
        json!({"status": "success", "processing_time": 1}).to_string(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        a["error"].as_str().unwrap().contains("processing_time"),
        "{a}"
    );
    // Pings.
    let resp = server
        .client
        .get(format!(
            "{}/report/app/success?processing_time_ms=7&event_id=e4",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = server
        .client
        .post(format!("{}/report/app/fail", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = server
        .client
        .get(format!(
            "{}/report/app/success?processing_time_ms=abc",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let rows = server
        .query("SELECT status, count(*) AS n FROM outcomes GROUP BY status ORDER BY status")
        .await;
    assert_eq!(
        rows,
        vec![
            json!({"status": "failure", "n": 2}),
            json!({"status": "success", "n": 3})
        ]
    );
    let linked = server
        .query(
            "SELECT d.event_type, o.processing_time_ms, o.records_processed, json_get_str(o.attributes, 'worker') AS worker \
             FROM outcomes o JOIN deliveries d ON o.delivery_id = d.id",
        )
        .await;
    assert_eq!(
        linked,
        vec![
            json!({"event_type": "order.paid", "processing_time_ms": 42.5, "records_processed": 3, "worker": "w1"})
        ]
    );
}

/// One request the app received: request line, headers, body.
type Seen = (String, Vec<(String, String)>, String);

/// A real local app for the forwarding tests.
struct App {
    url: String,
    seen: std::sync::Arc<parking_lot::Mutex<Vec<Seen>>>,
}

async fn start_app() -> App {
    use axum::Router;
    use axum::extract::Request;
    use axum::routing::any;
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let record = {
        let seen = std::sync::Arc::clone(&seen);
        move |req: Request| {
            let seen = std::sync::Arc::clone(&seen);
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                let headers = parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                seen.lock().push((
                    format!("{} {}", parts.method, parts.uri),
                    headers,
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                parts.uri.path().to_string()
            }
        }
    };
    let app = Router::new().route(
        "/{*path}",
        any(move |req: Request| {
            let record = record.clone();
            async move {
                let path = record(req).await;
                match path.as_str() {
                    "/fast" => (
                        axum::http::StatusCode::OK,
                        [("x-app", "yes")],
                        "processed".to_string(),
                    ),
                    "/slow" => {
                        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                        (
                            axum::http::StatusCode::OK,
                            [("x-app", "yes")],
                            "late".to_string(),
                        )
                    }
                    _ => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [("x-app", "yes")],
                        "boom".to_string(),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    App { url, seen }
}

fn refused_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/nobody-home")
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_records_the_apps_answer_for_fast_slow_failing_and_refused_apps() {
    let app = start_app().await;
    let config = format!(
        "[[sources]]\nname = \"fast\"\nforward_to = \"{u}/fast\"\n\
         [[sources]]\nname = \"slow\"\nforward_to = \"{u}/slow\"\nforward_timeout = \"400ms\"\n\
         [[sources]]\nname = \"fail\"\nforward_to = \"{u}/fail\"\n\
         [[sources]]\nname = \"refused\"\nforward_to = \"{r}\"\n",
        u = app.url,
        r = refused_url()
    );
    let (server, _dir) = Server::start(Options::default().config(&config));
    let mut ids = std::collections::HashMap::new();
    for (source, expect) in [
        ("fast", 200),
        ("slow", 504),
        ("fail", 500),
        ("refused", 502),
    ] {
        let resp = server
            .client
            .post(format!("{}/webhook/{source}?tenant=42", server.url))
            .header("content-type", "application/json")
            .header("x-custom", "kept")
            .body(json!({"type": "t", "source": source}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), expect, "{source}");
        let id = resp.headers()["x-hookscope-id"]
            .to_str()
            .unwrap()
            .to_string();
        if source == "fast" || source == "fail" {
            assert_eq!(
                resp.headers()["x-app"],
                "yes",
                "the app's headers come back"
            );
        }
        let body = resp.text().await.unwrap();
        match source {
            "fast" => assert_eq!(body, "processed"),
            "fail" => assert_eq!(body, "boom"),
            _ => assert!(body.contains("error"), "{body}"),
        }
        ids.insert(source, id);
    }
    // The app got the original method, path query, headers and body, plus the id.
    let seen = app.seen.lock().clone();
    let (line, headers, body) = seen.iter().find(|(l, _, _)| l.contains("/fast")).unwrap();
    assert_eq!(line, "POST /fast?tenant=42");
    let header = |k: &str| {
        headers
            .iter()
            .find(|(h, _)| h == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("x-custom"), Some("kept"));
    assert_eq!(header("x-hookscope-id"), Some(ids["fast"].as_str()));
    assert!(body.contains("\"fast\""));

    // The app's answer is recorded right after it is passed back.
    server.wait_for_rows("deliveries", 4).await;
    let rows = server
        .query("SELECT source, status_code, upstream_status, upstream_latency_ms, upstream_error FROM deliveries ORDER BY source")
        .await;
    let by: std::collections::HashMap<String, Value> = rows
        .into_iter()
        .map(|r| (r["source"].as_str().unwrap().to_string(), r))
        .collect();
    assert_eq!(
        (
            by["fast"]["status_code"].clone(),
            by["fast"]["upstream_status"].clone()
        ),
        (json!(200), json!(200))
    );
    assert!(by["fast"]["upstream_error"].is_null());
    assert_eq!(
        (
            by["fail"]["status_code"].clone(),
            by["fail"]["upstream_status"].clone()
        ),
        (json!(500), json!(500))
    );
    assert_eq!(by["slow"]["status_code"], 504);
    assert!(by["slow"]["upstream_status"].is_null());
    assert!(
        by["slow"]["upstream_error"]
            .as_str()
            .unwrap()
            .starts_with("timeout")
    );
    let slow_ms = by["slow"]["upstream_latency_ms"].as_f64().unwrap();
    assert!(
        (390.0..2500.0).contains(&slow_ms),
        "timeout latency {slow_ms}"
    );
    assert_eq!(by["refused"]["status_code"], 502);
    assert!(
        by["refused"]["upstream_error"]
            .as_str()
            .unwrap()
            .starts_with("connect")
    );
    for s in ["fast", "fail", "refused"] {
        assert!(by[s]["upstream_latency_ms"].as_f64().unwrap() >= 0.0);
    }

    let outcomes = server
        .query("SELECT o.status, o.error_type, o.processing_time_ms, d.source FROM outcomes o JOIN deliveries d ON o.delivery_id = d.id ORDER BY d.source")
        .await;
    let statuses: Vec<(String, String)> = outcomes
        .iter()
        .map(|o| {
            (
                o["source"].as_str().unwrap().to_string(),
                o["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("fail".into(), "failure".into()),
            ("fast".into(), "success".into()),
            ("refused".into(), "failure".into()),
            ("slow".into(), "failure".into())
        ]
    );
    let ids_seen: HashSet<&String> = ids.values().collect();
    assert_eq!(ids_seen.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forward_interrupted_by_a_crash_is_recorded_once_after_restart() {
    let app = start_app().await;
    let config = format!(
        "[[sources]]\nname = \"slow\"\nforward_to = \"{}/slow\"\nforward_timeout = \"10s\"\n",
        app.url
    );
    let (mut server, _dir) = Server::start(Options::default().config(&config));
    let url = format!("{}/webhook/slow", server.url);
    let pending = tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(url)
            .body("{\"type\":\"slow\"}")
            .send()
            .await;
    });
    // Wait until the app has the request (so the start is durable), then crash.
    for _ in 0..100 {
        if !app.seen.lock().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(app.seen.lock().len(), 1);
    server.kill();
    let _ = pending.await;
    server.restart();
    let rows = server
        .query("SELECT status_code, upstream_error FROM deliveries")
        .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0]["upstream_error"]
            .as_str()
            .unwrap()
            .starts_with("interrupted")
    );
    // And still once after another restart and a flush.
    assert!(server.terminate().success());
    server.restart();
    assert_eq!(server.count("deliveries").await, 1);
    assert_eq!(server.count("outcomes").await, 1);
}
