//! Alert rules end to end: a real local HTTP server as the webhook sink, a burst that
//! fires once, a kill -9 while it fires (neither sent again nor forgotten), and one
//! resolved notice when it clears.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::harness::{Options, Server};

/// A sink that records what it is sent; the first `fail_first` requests get a 503.
async fn start_sink(fail_first: usize) -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::Router;
    use axum::routing::post;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(Mutex::new(0usize));
    let record = Arc::clone(&seen);
    let app = Router::new().route(
        "/alerts",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let (record, calls) = (Arc::clone(&record), Arc::clone(&calls));
            async move {
                let n = {
                    let mut c = calls.lock();
                    *c += 1;
                    *c
                };
                if n <= fail_first {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                let mut v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                v["x-api-key"] = headers
                    .get("x-api-key")
                    .and_then(|h| h.to_str().ok())
                    .into();
                record.lock().push(v);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

async fn wait_for(seen: &Mutex<Vec<Value>>, n: usize, limit: Duration) -> Vec<Value> {
    let start = Instant::now();
    while seen.lock().len() < n && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen.lock().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_fires_once_survives_a_kill_and_resolves_once() {
    let (url, seen) = start_sink(1).await;
    let queries = tempfile::tempdir().unwrap();
    std::fs::write(
        queries.path().join("busy_source.sql"),
        "-- description: a source with :n deliveries or more in the last 6 seconds\n\
         -- schedule: every 1s\n-- alert: rows > 0\n-- severity: critical\n-- param: n = 8\n\
         SELECT source, count(*) AS deliveries FROM deliveries \
         WHERE received_at > now() - INTERVAL '6 seconds' AND received_at <= now() \
         GROUP BY source HAVING count(*) >= :n",
    )
    .unwrap();
    let config = format!(
        "[alerts]\nrenotify = \"1h\"\n[[alerts.sinks]]\nkind = \"webhook\"\nurl = \"{url}\"\n\
         headers = {{ \"X-Api-Key\" = \"k1\" }}\n[[alerts.sinks]]\nkind = \"log\"\n"
    );
    let (mut server, _dir) = Server::start(
        Options::default()
            .config(&config)
            .env("HOOKSCOPE_QUERIES_DIRS", queries.path().display()),
    );
    // A quiet baseline: nothing fires.
    for i in 0..3 {
        server.post_json("calm", &json!({"i": i})).await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(seen.lock().is_empty(), "{:?}", seen.lock());

    // A burst: one firing notice (the sink's first answer is a 503: retried).
    for i in 0..12 {
        server.post_json("burst", &json!({"i": i})).await;
    }
    let fired = wait_for(&seen, 1, Duration::from_secs(10)).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0]["state"], "firing");
    assert_eq!(fired[0]["rule"], "busy_source");
    assert_eq!(fired[0]["source"], "burst");
    assert_eq!(fired[0]["severity"], "critical");
    assert_eq!(fired[0]["x-api-key"], "k1");
    assert!(
        fired[0]["details"]["deliveries"].as_i64().unwrap() >= 8,
        "{fired:?}"
    );
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("hookscope_alerts_firing 1"), "{metrics}");

    // kill -9 while it fires: after the restart it is not sent again …
    server.kill();
    server.restart();
    // … and it resolves once when the burst leaves the window.
    let all = wait_for(&seen, 2, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let all_after = seen.lock().clone();
    assert_eq!(all, all_after, "more notices came");
    let states: Vec<&str> = all.iter().map(|n| n["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["firing", "resolved"], "{all:?}");
    assert_eq!(all[1]["source"], "burst");
    assert_eq!(all[1]["fired_at"], all[0]["fired_at"]);
    assert!(all[1]["resolved_at"].is_string());

    // The alerts table holds both notices of the episode.
    let rows = server
        .query("SELECT state, source, resolved_at IS NULL AS open FROM alerts ORDER BY notified_at")
        .await;
    assert_eq!(
        rows,
        [
            json!({"state": "firing", "source": "burst", "open": true}),
            json!({"state": "resolved", "source": "burst", "open": false})
        ]
    );
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("hookscope_alerts_firing 0"), "{metrics}");
    assert!(
        metrics.contains("hookscope_alert_notifications_total{sink=\"webhook\",result=\"ok\"} 1"),
        "{metrics}"
    );
}

/// While an alert keeps firing it is sent again once per renotify interval, with its
/// first `fired_at`, and not more often.
#[tokio::test(flavor = "multi_thread")]
async fn a_firing_alert_is_sent_again_once_per_renotify() {
    let (url, seen) = start_sink(0).await;
    let queries = tempfile::tempdir().unwrap();
    std::fs::write(
        queries.path().join("any_delivery.sql"),
        "-- schedule: every 1s\n-- alert: rows > 0\n\
         SELECT source, count(*) AS n FROM deliveries WHERE received_at <= now() GROUP BY source",
    )
    .unwrap();
    let config = format!(
        "[alerts]\nrenotify = \"3s\"\n[[alerts.sinks]]\nkind = \"webhook\"\nurl = \"{url}\"\n"
    );
    let (server, _dir) = Server::start(
        Options::default()
            .config(&config)
            .env("HOOKSCOPE_QUERIES_DIRS", queries.path().display()),
    );
    server.post_json("s", &json!({"a": 1})).await;
    let first = wait_for(&seen, 1, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 1, "{first:?}");
    // Sent again at +3 s and +6 s (runs every second find it each time) …
    let all = wait_for(&seen, 3, Duration::from_secs(20)).await;
    assert_eq!(all.len(), 3, "{all:?}");
    // … and not in between: the next is due at +9 s.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(seen.lock().len(), 3, "{:?}", seen.lock());
    assert!(
        all.iter()
            .all(|n| n["state"] == "firing" && n["fired_at"] == all[0]["fired_at"])
    );
    let _ = server;
}
