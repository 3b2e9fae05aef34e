//! `hookscope simulate` against `hookscope serve --demo`: every provider's requests
//! verify, outcomes and retries arrive, and the summary matches what was recorded.

use crate::harness::{Options, Server, binary};

#[tokio::test(flavor = "multi_thread")]
async fn simulated_traffic_is_signed_reported_and_counted() {
    let options = Options {
        args: vec!["--demo".into()],
        ..Options::default()
    };
    let (server, _dir) = Server::start(options);
    let out = std::process::Command::new(binary())
        .args([
            "simulate",
            "--server",
            &server.url,
            "--rate",
            "60",
            "--duration",
            "4s",
            "--failure-ratio",
            "0.2",
            "--seed",
            "3",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "<n> deliveries sent in <s> s, <m> acknowledged"
    let last = stdout
        .lines()
        .find(|l| l.contains("deliveries sent in"))
        .unwrap();
    let sent: i64 = last.split_whitespace().next().unwrap().parse().unwrap();
    assert!(last.contains(&format!("{sent} acknowledged")), "{stdout}");
    assert!(sent >= 100, "{stdout}");
    server.wait_for_rows("deliveries", sent).await;

    let rows = server
        .query("SELECT source, provider, count(*) AS n, count(*) FILTER (WHERE signature_status = 'valid') AS valid, max(attempt) AS attempts FROM deliveries GROUP BY 1, 2 ORDER BY 1")
        .await;
    let sources: Vec<&str> = rows.iter().map(|r| r["source"].as_str().unwrap()).collect();
    assert_eq!(
        sources,
        ["github", "sentry", "shopify", "slack", "stripe"],
        "{rows:?}"
    );
    for r in &rows {
        assert_eq!(r["source"], r["provider"], "{r}");
        assert_eq!(r["n"], r["valid"], "every request verifies: {r}");
    }
    // Failures reported, and retried by the providers that retry.
    let outcomes = server
        .query("SELECT count(*) AS n, count(*) FILTER (WHERE status = 'failure') AS failed FROM outcomes")
        .await;
    assert!(outcomes[0]["failed"].as_i64().unwrap() > 0, "{outcomes:?}");
    let retried = server
        .query("SELECT count(*) AS n FROM deliveries WHERE attempt > 1 AND source <> 'github'")
        .await;
    assert!(retried[0]["n"].as_i64().unwrap() > 0, "{retried:?}");
}

#[test]
fn a_server_that_is_not_there_is_a_clear_error() {
    let out = std::process::Command::new(binary())
        .args([
            "simulate",
            "--server",
            "http://127.0.0.1:9",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the server") && err.contains("serve --demo"),
        "{err}"
    );
}
