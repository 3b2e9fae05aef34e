//! Configuration tests: parsing, overrides, warnings, the README's reference.

use super::units::{parse_duration, parse_size};
use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn defaults_need_no_file() {
    let c = Config::from_toml("", "<defaults>", &no_env).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080");
    assert_eq!(c.data_dir, PathBuf::from("data/lake"));
    assert_eq!(c.max_body_bytes, ByteSize(10 << 20));
    assert_eq!(c.buffer.max_rows, 100_000);
    assert_eq!(c.buffer.flush_interval, Dur(Duration::from_secs(10)));
    assert_eq!(c.wal.sync, SyncMode::Always);
    assert!(c.warnings.is_empty());
}

#[test]
fn spec_example_parses() {
    let text = r#"
listen = "127.0.0.1:8080"
data_dir = "data/lake"
node_id = "node-1"
max_body_bytes = 10485760
strict_sources = false
queries_dirs = ["queries"]
[wal]
sync = "none"
[buffer]
flush_interval = "10s"
max_rows = 100000
[query]
timeout = "30s"
memory_limit = "1GiB"
[auth]
token = "${HOOKSCOPE_TOKEN}"
[retention]
days = 30
[[sources]]
name = "stripe"
provider = "stripe"
secret = "${STRIPE_WEBHOOK_SECRET}"
require_signature = true
tolerance = "5m"
required_fields = ["id", "type", "created"]
forward_to = "http://127.0.0.1:3000/hooks/stripe"
forward_timeout = "30s"
[[sources]]
name = "acme"
provider = "hmac"
signature_header = "X-Acme-Signature"
algorithm = "sha256"
encoding = "hex"
prefix = "sha256="
secret = ["new", "old"]
[alerts]
renotify = "1h"
[[alerts.sinks]]
kind = "log"
"#;
    let env = |k: &str| match k {
        "HOOKSCOPE_TOKEN" => Some("tok".to_string()),
        "STRIPE_WEBHOOK_SECRET" => Some("whsec_x".to_string()),
        _ => None,
    };
    let c = Config::from_toml(text, "hookscope.toml", &env).unwrap();
    assert_eq!(c.wal.sync, SyncMode::None);
    assert_eq!(c.query.memory_limit, ByteSize(1 << 30));
    assert_eq!(c.auth.token.as_deref(), Some("tok"));
    assert_eq!(c.sources[0].secret, Secrets(vec!["whsec_x".into()]));
    assert_eq!(c.sources[1].secret.0.len(), 2);
    // Every key of the spec's example is known.
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn unknown_keys_are_warnings_with_file_and_line() {
    let text =
        "listen = \"127.0.0.1:9\"\ncolour = \"blue\"\n[buffer]\nmax_rows = 5\nturbo = true\n";
    let c = Config::from_toml(text, "hookscope.toml", &no_env).unwrap();
    assert_eq!(c.buffer.max_rows, 5);
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("hookscope.toml:2") && c.warnings[0].contains("colour"));
    assert!(c.warnings[1].contains("hookscope.toml:5") && c.warnings[1].contains("buffer.turbo"));
}

#[test]
fn env_overrides_file_values() {
    let env = |k: &str| match k {
        "HOOKSCOPE_BUFFER_MAX_ROWS" => Some("42".to_string()),
        "HOOKSCOPE_WAL_SYNC" => Some("none".to_string()),
        "HOOKSCOPE_WAL_COMMIT_DELAY" => Some("0".to_string()),
        "HOOKSCOPE_DATA_DIR" => Some("/tmp/lake".to_string()),
        "HOOKSCOPE_PARQUET_FLUSH_CPU_PERCENT" => Some("30".to_string()),
        "HOOKSCOPE_PARQUET_COMPACT_ZSTD_LEVEL" => Some("12".to_string()),
        _ => None,
    };
    let c = Config::from_toml("[buffer]\nmax_rows = 7\n", "f", &env).unwrap();
    assert_eq!(c.buffer.max_rows, 42);
    assert_eq!(c.parquet.flush_cpu_percent, 30);
    assert_eq!(c.parquet.compact_zstd_level, 12);
    assert_eq!(c.wal.sync, SyncMode::None);
    assert_eq!(c.wal.commit_delay, Dur(Duration::ZERO));
    let file = Config::from_toml("[wal]\ncommit_delay = \"250us\"\n", "f", &no_env).unwrap();
    assert_eq!(file.wal.commit_delay, Dur(Duration::from_micros(250)));
    assert_eq!(c.data_dir, PathBuf::from("/tmp/lake"));
    let bad = |k: &str| (k == "HOOKSCOPE_BUFFER_MAX_ROWS").then(|| "lots".to_string());
    let err = Config::from_toml("", "f", &bad).unwrap_err().to_string();
    assert!(
        err.contains("HOOKSCOPE_BUFFER_MAX_ROWS") && err.contains("integer"),
        "{err}"
    );
}

#[test]
fn flush_cpu_percent_is_a_share_of_one_core() {
    let c = Config::from_toml("", "f", &no_env).unwrap();
    assert_eq!(c.parquet.flush_cpu_percent, 50);
    for bad in ["0", "101"] {
        let text = format!("[parquet]\nflush_cpu_percent = {bad}\n");
        let err = Config::from_toml(&text, "f", &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("flush_cpu_percent") && err.contains("1..=100"),
            "{err}"
        );
    }
}

/// Dotted paths of every scalar or list key under `value` (not `sources` and
/// `alerts.sinks`: tables configured in the file only).
fn key_paths(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                if (prefix.is_empty() && k == "sources") || (prefix == "alerts" && k == "sinks") {
                    continue;
                }
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                key_paths(&path, v, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_key_has_an_environment_override_and_a_line_in_the_readme() {
    // Optional keys, set so that they are listed.
    let c = Config {
        storage: Some("file:///lake".into()),
        remote_addr_header: Some("x-forwarded-for".into()),
        auth: AuthSection {
            token: Some("t".into()),
        },
        retention: RetentionSection {
            days: Some(30),
            ..Default::default()
        },
        ..Config::default()
    };
    let mut keys = Vec::new();
    key_paths("", &toml::Value::try_from(&c).unwrap(), &mut keys);
    assert!(keys.len() > 20, "{keys:?}");
    let readme = include_str!("../../README.md");
    let reference = readme
        .split("## Configuration")
        .nth(1)
        .and_then(|r| r.split("```toml").nth(1))
        .and_then(|r| r.split("```").next())
        .expect("the README's configuration reference");
    for key in &keys {
        assert!(
            ENV_KEYS.iter().any(|(_, k, _)| k == key),
            "config key {key} has no HOOKSCOPE_* override in ENV_KEYS"
        );
        let (section, name) = key.rsplit_once('.').unwrap_or(("", key));
        let in_section = if section.is_empty() {
            reference.split("\n[").next().unwrap_or("")
        } else {
            reference
                .split(&format!("[{section}]"))
                .nth(1)
                .and_then(|r| r.split("\n[").next())
                .unwrap_or("")
        };
        assert!(
            in_section.lines().any(|l| l
                .trim_start()
                .trim_start_matches('#')
                .trim_start()
                .starts_with(&format!("{name} ="))),
            "config key {key} is not in the README's configuration reference"
        );
    }
    for (var, key, _) in ENV_KEYS {
        assert!(
            keys.iter().any(|k| k == key),
            "{var} overrides {key}, which is not a key"
        );
    }
}

#[test]
fn alert_sinks_and_queries_dirs_are_read() {
    let c = Config::from_toml(
        "queries_dirs = [\"q\"]\n[alerts]\nrenotify = \"30m\"\n\
         [[alerts.sinks]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9000/a\"\n\
         headers = { \"X-Api-Key\" = \"k\" }\n[[alerts.sinks]]\nkind = \"log\"\n",
        "f",
        &no_env,
    )
    .unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.alerts.renotify, Dur(Duration::from_secs(1800)));
    assert_eq!(c.alerts.sinks.len(), 2);
    assert_eq!(c.alerts.sinks[0].headers["X-Api-Key"], "k");
    for (bad, said) in [
        (
            "[[alerts.sinks]]\nkind = \"pager\"\n",
            "not one of log, webhook, slack",
        ),
        ("[[alerts.sinks]]\nkind = \"slack\"\n", "needs url"),
        ("[alerts]\nrenotify = \"0s\"\n", "above 0"),
    ] {
        let err = Config::from_toml(bad, "f", &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains(said), "{bad}: {err}");
    }
    let c = Config::from_toml("", "f", &|k: &str| {
        (k == "HOOKSCOPE_QUERIES_DIRS").then(|| "a, b".to_string())
    })
    .unwrap();
    assert_eq!(c.queries_dirs, vec![PathBuf::from("a"), PathBuf::from("b")]);
}

#[test]
fn a_body_limit_past_what_a_record_can_hold_is_refused() {
    let err = Config::from_toml("max_body_bytes = \"1GiB\"\n", "f", &no_env)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_body_bytes") && err.contains("256 MiB"),
        "{err}"
    );
    let ok = Config::from_toml("max_body_bytes = \"256MiB\"\n", "f", &no_env).unwrap();
    assert_eq!(ok.max_body_bytes.0, MAX_BODY_LIMIT);
}

#[test]
fn bad_values_are_errors_naming_the_problem() {
    let err = Config::from_toml("[buffer]\nflush_interval = \"10 parsecs\"\n", "f", &no_env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("duration"), "{err}");
    let err = Config::from_toml("[[sources]]\nname = \"../etc\"\n", "f", &no_env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("../etc"), "{err}");
    let err = Config::from_toml(
        "[[sources]]\nname = \"a\"\n[[sources]]\nname = \"a\"\n",
        "f",
        &no_env,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("twice"), "{err}");
    let err = Config::from_toml("[parquet]\ncompact_zstd_level = 23\n", "f", &no_env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("parquet.compact_zstd_level 23"), "{err}");
}

#[test]
fn durations_and_sizes_parse() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(
        parse_duration("7d").unwrap(),
        Duration::from_secs(7 * 86400)
    );
    assert!(parse_duration("5 fortnights").is_err());
    // A bare number is seconds, fractions too.
    assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
    assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
    assert!(parse_duration("-1").is_err());
    assert!(parse_duration("NaN").is_err());
    assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
    assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
    assert_eq!(parse_size("512").unwrap(), 512);
    assert!(parse_size("big").is_err());
}

#[test]
fn names_are_checked() {
    assert!(is_valid_name("stripe-prod_1.x"));
    for bad in ["", "..", "a/b", "a b", &"x".repeat(65)] {
        assert!(!is_valid_name(bad), "{bad}");
    }
}

#[test]
fn retention_is_off_by_default_and_set_per_table() {
    use crate::tables::Table;
    let c = Config::from_toml("", "f", &no_env).unwrap();
    assert!(c.retention.days_per_table().is_empty());
    let c = Config::from_toml(
        "[retention]\ndays = 30\n[retention.tables]\noutcomes = 7\n",
        "f",
        &no_env,
    )
    .unwrap();
    assert_eq!(
        c.retention.days_per_table(),
        vec![
            (Table::Deliveries, 30),
            (Table::Outcomes, 7),
            (Table::Alerts, 30),
            (Table::QueryRuns, 30)
        ]
    );
    let err = Config::from_toml("[retention]\ndays = 0\n", "f", &no_env).unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
    let err = Config::from_toml("[retention.tables]\ndelivery = 3\n", "f", &no_env).unwrap_err();
    assert!(err.to_string().contains("no such table"), "{err}");
}
