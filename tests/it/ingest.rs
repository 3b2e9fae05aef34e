//! Receiving deliveries: what is recorded, and bad input.

use serde_json::{Value, json};

use crate::harness::{Options, Server};

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_is_recorded_with_its_request_columns() {
    let (server, _dir) = Server::start(Options::default());
    let body = json!({"type": "invoice.paid", "data": {"n": 1}});
    let (status, answer) = server
        .post(
            "billing",
            &[
                ("content-type", "application/json"),
                ("user-agent", "Stripe/1.0"),
                ("authorization", "Bearer sekrit-token"),
                ("cookie", "sid=sekrit-cookie"),
                ("x-request-id", "abc"),
            ],
            body.to_string(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["duplicate"], false);
    let id = answer["id"].as_str().unwrap();
    assert_eq!(id.len(), 26, "ULID");
    let rows = server
        .query(&format!("SELECT * FROM deliveries WHERE id = '{id}'"))
        .await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r["source"], "billing");
    assert_eq!(r["provider"], "generic");
    assert_eq!(r["method"], "POST");
    assert_eq!(r["path"], "/webhook/billing");
    assert_eq!(r["content_type"], "application/json");
    assert_eq!(r["user_agent"], "Stripe/1.0");
    assert!(r["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(r["event_type"], "invoice.paid");
    assert_eq!(r["signature_status"], "unchecked");
    assert_eq!(r["status_code"], 200);
    assert_eq!(r["attempt"], 1);
    assert_eq!(r["is_duplicate"], false);
    assert_eq!(r["payload_size"], body.to_string().len());
    assert_eq!(r["body"], body.to_string());
    assert!(r["body_base64"].is_null());
    assert!(r["payload_issues"].is_null());
    assert_eq!(
        r["dedup_key"],
        format!("sha256:{}", r["payload_sha256"].as_str().unwrap())
    );
    let headers: Value = serde_json::from_str(r["headers"].as_str().unwrap()).unwrap();
    assert_eq!(headers["x-request-id"], "abc");
    assert_eq!(headers["authorization"], "[redacted]");
    assert_eq!(headers["cookie"], "[redacted]");
    let all = serde_json::to_string(&rows).unwrap();
    assert!(!all.contains("sekrit"), "secret stored: {all}");
    // Provider-specific columns exist from day one.
    for col in [
        "event_id",
        "delivery_id",
        "sent_at",
        "delivery_lag_ms",
        "upstream_status",
        "upstream_latency_ms",
        "upstream_error",
    ] {
        assert!(r.get(col).is_some(), "column {col} missing");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_body_three_times_is_attempts_one_two_three() {
    let (server, _dir) = Server::start(Options::default());
    let body = json!({"type": "order.created", "id": 7});
    let mut dup = Vec::new();
    for _ in 0..3 {
        let (status, answer) = server
            .post(
                "shop",
                &[("content-type", "application/json")],
                body.to_string(),
            )
            .await;
        assert_eq!(status, 200);
        dup.push(answer["duplicate"].as_bool().unwrap());
    }
    assert_eq!(dup, vec![false, true, true]);
    let rows = server
        .query("SELECT attempt, is_duplicate, retry_gap_ms FROM deliveries ORDER BY received_at")
        .await;
    let attempts: Vec<i64> = rows
        .iter()
        .map(|r| r["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    assert!(rows[0]["retry_gap_ms"].is_null());
    assert!(rows[1]["retry_gap_ms"].as_f64().unwrap() >= 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_source_names_get_400() {
    let (server, _dir) = Server::start(Options::default());
    // Names are taken as sent: `st%72ipe` is not `stripe`.
    for bad in [
        "a%2Fb",
        "a/b",
        &"x".repeat(65),
        "sp%20ace",
        "a%00b",
        "st%72ipe",
    ] {
        let (status, answer) = server.post(bad, &[], "x").await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("invalid source name"),
            "{answer}"
        );
    }
    let resp = server
        .client
        .post(format!("{}/webhook/", server.url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = server
        .client
        .post(format!("{}/report/st%72ipe/success", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Dot segments, sent raw (HTTP clients would resolve them before sending).
    for path in [
        "/webhook/..",
        "/webhook/%2e%2e",
        "/webhook/../query",
        "/webhook/.",
    ] {
        assert_eq!(raw_post_status(&server.url, path), 400, "{path}");
    }
    assert_eq!(server.count("deliveries").await, 0);
    // A valid name of 64 characters is fine.
    let (status, _) = server.post(&"x".repeat(64), &[], "x").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_limit_gets_413_and_a_row_without_body() {
    let (server, _dir) = Server::start(Options::default().env("HOOKSCOPE_MAX_BODY_BYTES", 1024));
    let big = "y".repeat(4000);
    let (status, answer) = server
        .post("big", &[("content-type", "text/plain")], big.clone())
        .await;
    assert_eq!(status, 413, "{answer}");
    let id = answer["id"]
        .as_str()
        .expect("the 413 row has an id")
        .to_string();
    // Chunked (no Content-Length): stopped while reading.
    let stream = futures::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'z'; 512]))),
    );
    let (status, _) = server
        .post("big", &[], reqwest::Body::wrap_stream(stream))
        .await;
    assert_eq!(status, 413);
    let rows = server
        .query(&format!("SELECT body, body_base64, payload_size, payload_issues, status_code FROM deliveries WHERE id = '{id}'"))
        .await;
    let r = &rows[0];
    assert!(r["body"].is_null() && r["body_base64"].is_null());
    assert_eq!(r["payload_size"], 4000);
    assert_eq!(r["status_code"], 413);
    assert!(
        r["payload_issues"]
            .as_str()
            .unwrap()
            .contains("body_too_large")
    );
    assert_eq!(server.count("deliveries").await, 2);
    // A body at the limit is accepted whole.
    let (status, _) = server.post("big", &[], "k".repeat(1024)).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_bodies_are_stored_base64() {
    let (server, _dir) = Server::start(Options::default());
    let bytes: Vec<u8> = (0..=255u8).rev().collect();
    let (status, answer) = server
        .post(
            "bin",
            &[("content-type", "application/octet-stream")],
            bytes.clone(),
        )
        .await;
    assert_eq!(status, 200);
    let id = answer["id"].as_str().unwrap();
    let rows = server
        .query(&format!(
            "SELECT body, body_base64, payload_size FROM deliveries WHERE id = '{id}'"
        ))
        .await;
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rows[0]["body_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, bytes);
    assert!(rows[0]["body"].is_null());
    assert_eq!(rows[0]["payload_size"], 256);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_is_kept_as_text_with_payload_issues() {
    let (server, _dir) = Server::start(Options::default());
    let (status, answer) = server
        .post(
            "app",
            &[("content-type", "application/json")],
            "{\"type\": \"a\", oops",
        )
        .await;
    assert_eq!(status, 200);
    let id = answer["id"].as_str().unwrap();
    let rows = server
        .query(&format!(
            "SELECT body, payload_issues FROM deliveries WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(rows[0]["body"], "{\"type\": \"a\", oops");
    let issues: Value = serde_json::from_str(rows[0]["payload_issues"].as_str().unwrap()).unwrap();
    assert_eq!(issues[0]["kind"], "not_json");
    // The issues are queryable with the JSON functions.
    let rows = server
        .query("SELECT count(*) AS n FROM deliveries WHERE json_get_str(payload_issues, 0, 'kind') = 'not_json'")
        .await;
    assert_eq!(rows[0]["n"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_post_is_accepted_without_forwarding() {
    let (server, _dir) = Server::start(Options::default());
    let resp = server.get("/webhook/app").await;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_sources_refuses_unknown_sources() {
    let (server, _dir) = Server::start(
        Options::default().config("strict_sources = true\n[[sources]]\nname = \"known\"\n"),
    );
    assert_eq!(server.post("known", &[], "x").await.0, 200);
    let (status, answer) = server.post("unknown", &[], "x").await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(server.count("deliveries").await, 1);
}

/// POSTs to `path` exactly as written, over a plain TCP connection.
fn raw_post_status(url: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer.split_whitespace().nth(1).unwrap().parse().unwrap()
}
