//! The dashboard in a real browser: headless Chromium loads the page from a server
//! fed by `hookscope simulate` and must render sources, numbers and charts, open one
//! delivery, run SQL, show a delivery posted while it is open in the live tail, and
//! log no errors. A screenshot is left in the test's target directory.
//!
//! Chromium is looked for as `chromium`, `chromium-browser` or `google-chrome` (or
//! `HOOKSCOPE_CHROMIUM`). Without it the test says so and passes, unless
//! `HOOKSCOPE_REQUIRE_CHROMIUM` is set (CI installs it and sets that).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use crate::harness::{Options, Server, binary};

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("HOOKSCOPE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Loads `url` headless; returns (the DOM after the scripts ran, stderr).
fn load(browser: &PathBuf, url: &str, extra: &[&str]) -> (String, String) {
    // A profile per run: a browser still exiting holds its profile, and a second
    // one started on it hands the URL over and prints nothing.
    let profile = tempfile::tempdir().expect("profile dir");
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=15000",
            "--window-size=1280,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // cargo points the dynamic loader at its build directory; Chromium must load
        // its own libraries.
        .env_remove("LD_LIBRARY_PATH")
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn no_page_errors(dom: &str, stderr: &str) {
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page did not finish loading:\n{dom}\n{}",
        stderr
            .lines()
            .filter(|l| !l.contains("dbus"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !dom.contains("data-errors="),
        "the page counted script errors:\n{dom}"
    );
    let console: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") && (l.contains("Uncaught") || l.contains("Error")))
        .collect();
    assert!(console.is_empty(), "console errors: {console:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_renders_drills_down_runs_sql_and_tails_live() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("HOOKSCOPE_REQUIRE_CHROMIUM").is_none(),
            "HOOKSCOPE_REQUIRE_CHROMIUM is set but no chromium was found"
        );
        eprintln!("skipped: no chromium (install it to test the dashboard in a browser)");
        return;
    };
    let (server, _dir) = Server::start(Options {
        args: vec!["--demo".into()],
        ..Options::default()
    });
    let sim = std::process::Command::new(binary())
        .args([
            "simulate",
            "--server",
            &server.url,
            "--rate",
            "50",
            "--duration",
            "3s",
        ])
        .output()
        .unwrap();
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );

    // The page, while deliveries keep arriving (the live tail must show one of them).
    let posting = Arc::new(AtomicBool::new(true));
    let poster = {
        let (url, client, posting) = (
            server.url.clone(),
            server.client.clone(),
            Arc::clone(&posting),
        );
        tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut i = 0;
            while posting.load(Ordering::Acquire) {
                i += 1;
                if let Ok(resp) = client
                    .post(format!("{url}/webhook/live"))
                    .body(json!({"tick": i}).to_string())
                    .send()
                    .await
                    && let Ok(bytes) = resp.bytes().await
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
                    && let Some(id) = v["id"].as_str()
                {
                    ids.push(id.to_string());
                }
                tokio::time::sleep(std::time::Duration::from_millis(40)).await;
            }
            ids
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (b, url) = (browser.clone(), format!("{}/", server.url));
    let (dom, stderr) = tokio::task::spawn_blocking(move || load(&b, &url, &["--dump-dom"]))
        .await
        .unwrap();
    posting.store(false, Ordering::Release);
    let posted = poster.await.unwrap();
    no_page_errors(&dom, &stderr);
    for source in ["stripe", "github", "shopify", "slack", "sentry"] {
        assert!(
            dom.contains(&format!("aria-label=\"source {source}\"")),
            "no tile for {source}"
        );
    }
    assert!(
        dom.contains("<dt>deliveries</dt>"),
        "no numbers in the tiles"
    );
    assert!(
        dom.matches("<canvas").count() >= 5,
        "the charts did not render"
    );
    assert!(
        dom.matches("<tr class=\"row\"").count() >= 10,
        "the deliveries table is empty"
    );
    assert!(
        dom.contains("<option value=\"traffic_spike\""),
        "the saved queries are not offered"
    );
    let live = dom
        .split("<ol id=\"live\"")
        .nth(1)
        .and_then(|rest| rest.split("</ol>").next())
        .unwrap_or_default();
    assert!(
        posted.iter().any(|id| live.contains(id.as_str())),
        "the live tail shows none of the {} deliveries posted while the page was open: {live}",
        posted.len()
    );

    // Drill-down into one delivery.
    let id = server
        .query("SELECT id FROM deliveries WHERE source = 'stripe' ORDER BY received_at LIMIT 1")
        .await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (b, url) = (browser.clone(), format!("{}/#event={id}", server.url));
    let (dom, stderr) = tokio::task::spawn_blocking(move || load(&b, &url, &["--dump-dom"]))
        .await
        .unwrap();
    no_page_errors(&dom, &stderr);
    let detail = dom.split("id=\"detail\"").nth(1).unwrap_or_default();
    assert!(
        detail.contains(&id) && detail.contains("Attempts of this event"),
        "no drill-down: {detail}"
    );
    assert!(
        detail.contains("stripe-signature"),
        "the headers are not shown"
    );

    // The SQL box runs a query.
    let (b, url) = (
        browser.clone(),
        format!(
            "{}/#sql=SELECT%20%27sql%20box%20works%27%20AS%20answer",
            server.url
        ),
    );
    let (dom, stderr) = tokio::task::spawn_blocking(move || load(&b, &url, &["--dump-dom"]))
        .await
        .unwrap();
    no_page_errors(&dom, &stderr);
    let result = dom.split("id=\"sql-result\"").nth(1).unwrap_or_default();
    assert!(
        result.contains("sql box works") && result.contains("1 rows"),
        "{result}"
    );

    // A screenshot, kept with the test's artefacts.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let (b, url) = (browser, format!("{}/", server.url));
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || load(&b, &url, &[&arg]))
        .await
        .unwrap();
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "no screenshot at {}", shot.display());
    eprintln!("dashboard screenshot: {}", shot.display());
}

/// Behind a token, the page asks for it instead of showing errors.
#[tokio::test(flavor = "multi_thread")]
async fn behind_a_token_the_dashboard_asks_for_it() {
    let Some(browser) = chromium() else {
        assert!(std::env::var_os("HOOKSCOPE_REQUIRE_CHROMIUM").is_none());
        return;
    };
    let (server, _dir) = Server::start(Options::default().env("HOOKSCOPE_TOKEN", "t0ken"));
    let url = format!("{}/", server.url);
    let (dom, stderr) = tokio::task::spawn_blocking(move || load(&browser, &url, &["--dump-dom"]))
        .await
        .unwrap();
    no_page_errors(&dom, &stderr);
    let login = dom
        .split("<section id=\"login\"")
        .nth(1)
        .and_then(|rest| rest.split('>').next())
        .unwrap_or_default();
    assert!(
        !login.contains("hidden"),
        "the token form is not shown: {login}"
    );
    assert!(dom.contains("id=\"token\""));
}
