//! The inspection API on known deliveries: filters, cursor pages, the drill-down of
//! one delivery with its attempts and outcome, stats, and the live stream (also with
//! a client that never reads, which must not hold up ingest).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::harness::{Options, Server};

async fn get(server: &Server, path: &str) -> (u16, Value) {
    let resp = server.get(path).await;
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap(),
    )
}

/// Reads the SSE stream until a `delivery` event with `id` arrives.
async fn wait_for_event(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    id: &str,
) -> Value {
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("no event in time")
            .expect("stream ended")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        for block in text.split("\n\n") {
            if block.contains("event: delivery")
                && let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: "))
                && let Ok(v) = serde_json::from_str::<Value>(data)
                && v["id"] == id
            {
                return v;
            }
        }
    }
    panic!("no delivery event for {id}: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_filter_page_and_drill_down_on_known_deliveries() {
    let (server, _dir) = Server::start(Options::default());
    let mut ids = Vec::new();
    for i in 0..7 {
        let source = if i % 2 == 0 { "alpha" } else { "beta" };
        let body =
            json!({"type": "order.created", "n": i, "note": if i == 3 { "needle" } else { "hay" }});
        ids.push((source, server.post_json(source, &body).await));
    }
    // The same event again: a duplicate of the first.
    let first = json!({"type": "order.created", "n": 0, "note": "hay"});
    let again = server.post_json("alpha", &first).await;
    ids.push(("alpha", again.clone()));
    // The app reports a failure for the fourth.
    let (failed_source, failed) = ids[3].clone();
    let resp = server
        .client
        .post(format!("{}/report/{failed_source}", server.url))
        .header("content-type", "application/json")
        .body(json!({"delivery_id": failed, "status": "failure", "processing_time_ms": 12.5, "error_type": "db"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // Pages of three, newest first: every delivery once.
    let mut seen = Vec::new();
    let mut path = "/api/events?limit=3".to_string();
    loop {
        let (status, page) = get(&server, &path).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 3);
        seen.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/events?limit=3&cursor={c}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = ids.iter().map(|(_, id)| id.clone()).collect();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, each once");

    let ids_of = |page: &Value| -> Vec<String> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, page) = get(&server, "/api/events?source=beta").await;
    let beta: Vec<String> = ids
        .iter()
        .rev()
        .filter(|(s, _)| *s == "beta")
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(ids_of(&page), beta);
    let (_, page) = get(&server, "/api/events?duplicate=true").await;
    assert_eq!(ids_of(&page), vec![again.clone()]);
    assert_eq!(page["events"][0]["attempt"], 2);
    let (_, page) = get(&server, "/api/events?q=needle").await;
    assert_eq!(ids_of(&page), vec![ids[3].1.clone()]);
    let (_, page) = get(&server, "/api/events?status=failure").await;
    assert_eq!(ids_of(&page), vec![failed.clone()]);
    assert_eq!(page["events"][0]["outcome"], "failure");
    let (_, page) = get(&server, "/api/events?status=none&source=alpha").await;
    assert_eq!(ids_of(&page).len(), 5);
    let since = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, page) = get(
        &server,
        &format!("/api/events?since={}", since.replace('+', "%2B")),
    )
    .await;
    assert!(ids_of(&page).is_empty());
    let (status, err) = get(&server, "/api/events?status=done").await;
    assert_eq!(status, 400);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("success, failure or none")
    );
    let (status, _) = get(&server, "/api/events?cursor=nonsense").await;
    assert_eq!(status, 400);
    // A cursor at the edge of time is an empty page, not a crash.
    let (status, page) = get(&server, "/api/events?cursor=-9223372036854775808:x").await;
    assert_eq!(status, 200, "{page}");
    // A source that reads as a number is still a name.
    let (status, page) = get(&server, "/api/events?source=123").await;
    assert_eq!(status, 200, "{page}");
    assert!(ids_of(&page).is_empty());
    // A value is a literal, never SQL.
    let (status, page) = get(&server, "/api/events?source=alpha'%20OR%20'1'='1").await;
    assert_eq!(status, 200);
    assert!(ids_of(&page).is_empty());

    // One delivery whole: headers, the body parsed, its two arrivals, the outcome.
    let (status, one) = get(&server, &format!("/api/events/{again}")).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["delivery"]["body_json"]["n"], 0);
    assert!(one["delivery"]["headers"].is_object());
    let attempts = one["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{one}");
    assert_eq!(attempts[0]["id"], ids[0].1.as_str());
    assert_eq!(attempts[1]["attempt"], 2);
    assert!(attempts[1]["retry_gap_ms"].as_f64().unwrap() >= 0.0);
    let (_, one) = get(&server, &format!("/api/events/{failed}")).await;
    assert_eq!(one["outcomes"][0]["status"], "failure");
    assert_eq!(one["outcomes"][0]["error_type"], "db");
    let (status, _) = get(&server, "/api/events/01NOSUCHID").await;
    assert_eq!(status, 404);

    // Stats per source.
    let (status, stats) = get(&server, "/api/stats?window=1h").await;
    assert_eq!(status, 200, "{stats}");
    let sources = stats["sources"].as_array().unwrap();
    let alpha = sources.iter().find(|s| s["source"] == "alpha").unwrap();
    assert_eq!(alpha["deliveries"], 5);
    assert!((alpha["duplicate_ratio"].as_f64().unwrap() - 0.2).abs() < 1e-9);
    let beta = sources.iter().find(|s| s["source"] == "beta").unwrap();
    assert_eq!(beta["reports"], 1);
    assert_eq!(beta["failure_ratio"], 1.0);
    let (status, _) = get(&server, "/api/stats?window=soon").await;
    assert_eq!(status, 400);
    let (status, err) = get(&server, "/api/stats?window=500000000y").await;
    assert_eq!(status, 400, "{err}");
    let (status, doc) = get(&server, "/api/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/api/events/{id}"]["get"].is_object());
    let (status, alerts) = get(&server, "/api/alerts").await;
    assert_eq!(status, 200);
    assert!(alerts.as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_stream_sends_new_deliveries_and_a_client_that_does_not_read_holds_nothing_up() {
    let (mut server, _dir) = Server::start(Options::default());
    let live = server.get("/api/events/stream?source=gamma").await;
    assert_eq!(live.status().as_u16(), 200);
    assert!(
        live.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut live = live.bytes_stream();
    // A second client that never reads.
    let stalled = server.get("/api/events/stream").await;
    assert_eq!(stalled.status().as_u16(), 200);

    server.post_json("delta", &json!({"other": true})).await;
    let id = server.post_json("gamma", &json!({"type": "ping"})).await;
    let event = wait_for_event(&mut live, &id).await;
    assert_eq!(event["source"], "gamma");
    assert_eq!(event["attempt"], 1);
    assert!(event["payload_size"].as_i64().unwrap() > 0);

    // More deliveries than a client may fall behind by (the channel's capacity; the
    // drop itself is tested in `http::api`): all acknowledged while the stalled
    // client reads nothing, and the live one still gets the newest.
    let mut last = String::new();
    for i in 0..1_500 {
        last = server.post_json("gamma", &json!({"i": i})).await;
    }
    let _ = wait_for_event(&mut live, &last).await;
    assert_eq!(server.count("deliveries").await, 1_502);
    drop(stalled);
    // The server still stops promptly with a client connected.
    let _live_kept_open = live;
    let status = server.terminate();
    assert!(status.success());
}
