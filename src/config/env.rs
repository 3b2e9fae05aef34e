//! The environment's part of the configuration: `HOOKSCOPE_*` overrides of every key,
//! `${VAR}` in values, and the keys read but not acted on yet.
//!
//! Invariant: every key of the configuration has its override here (a test checks
//! it against the keys and the README).

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Str,
    Int,
    Bool,
    /// Comma-separated.
    List,
}

/// Environment overrides: variable, config key path, value kind.
pub(super) const ENV_KEYS: &[(&str, &str, Kind)] = &[
    ("HOOKSCOPE_LISTEN", "listen", Kind::Str),
    ("HOOKSCOPE_DATA_DIR", "data_dir", Kind::Str),
    ("HOOKSCOPE_STORAGE", "storage", Kind::Str),
    ("HOOKSCOPE_NODE_ID", "node_id", Kind::Str),
    ("HOOKSCOPE_MAX_BODY_BYTES", "max_body_bytes", Kind::Str),
    ("HOOKSCOPE_STRICT_SOURCES", "strict_sources", Kind::Bool),
    (
        "HOOKSCOPE_REMOTE_ADDR_HEADER",
        "remote_addr_header",
        Kind::Str,
    ),
    ("HOOKSCOPE_LOG_FORMAT", "log_format", Kind::Str),
    ("HOOKSCOPE_WAL_SYNC", "wal.sync", Kind::Str),
    ("HOOKSCOPE_WAL_COMMIT_DELAY", "wal.commit_delay", Kind::Str),
    (
        "HOOKSCOPE_WAL_SEGMENT_MAX_BYTES",
        "wal.segment_max_bytes",
        Kind::Str,
    ),
    ("HOOKSCOPE_QUERIES_DIRS", "queries_dirs", Kind::List),
    (
        "HOOKSCOPE_BUFFER_FLUSH_INTERVAL",
        "buffer.flush_interval",
        Kind::Str,
    ),
    ("HOOKSCOPE_BUFFER_MAX_ROWS", "buffer.max_rows", Kind::Int),
    ("HOOKSCOPE_BUFFER_MAX_BYTES", "buffer.max_bytes", Kind::Str),
    ("HOOKSCOPE_QUERY_TIMEOUT", "query.timeout", Kind::Str),
    (
        "HOOKSCOPE_QUERY_MEMORY_LIMIT",
        "query.memory_limit",
        Kind::Str,
    ),
    (
        "HOOKSCOPE_QUERY_MAX_RESULT_BYTES",
        "query.max_result_bytes",
        Kind::Str,
    ),
    ("HOOKSCOPE_TOKEN", "auth.token", Kind::Str),
    ("HOOKSCOPE_RETENTION_DAYS", "retention.days", Kind::Int),
    ("HOOKSCOPE_ALERTS_RENOTIFY", "alerts.renotify", Kind::Str),
    ("HOOKSCOPE_DEDUP_WINDOW", "dedup.window", Kind::Str),
    ("HOOKSCOPE_DEDUP_MAX_KEYS", "dedup.max_keys", Kind::Int),
    (
        "HOOKSCOPE_PARQUET_ZSTD_LEVEL",
        "parquet.zstd_level",
        Kind::Int,
    ),
    (
        "HOOKSCOPE_PARQUET_COMPACT_ZSTD_LEVEL",
        "parquet.compact_zstd_level",
        Kind::Int,
    ),
    (
        "HOOKSCOPE_PARQUET_FLUSH_CPU_PERCENT",
        "parquet.flush_cpu_percent",
        Kind::Int,
    ),
    (
        "HOOKSCOPE_PARQUET_COMPACT_INTERVAL",
        "parquet.compact_interval",
        Kind::Str,
    ),
];

pub(super) fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) {
    let mut parts = path.split('.').peekable();
    let mut cur = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_string(), value);
            return;
        }
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(t) => cur = t,
            _ => return,
        }
    }
}

/// Replaces `${VAR}` in every string value with the variable's value.
pub(super) fn expand_vars(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) {
    fn walk(v: &mut toml::Value, env: &dyn Fn(&str) -> Option<String>, warnings: &mut Vec<String>) {
        match v {
            toml::Value::String(s) if s.contains("${") => *s = expand(s, env, warnings),
            toml::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, env, warnings)),
            toml::Value::Table(t) => t.iter_mut().for_each(|(_, x)| walk(x, env, warnings)),
            _ => {}
        }
    }
    table.iter_mut().for_each(|(_, v)| walk(v, env, warnings));
}

pub(super) fn expand(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let var = &after[..end];
                match env(var) {
                    Some(v) => out.push_str(&v),
                    None => warnings.push(format!("environment variable {var} is not set; ${{{var}}} expands to an empty value")),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The 1-based line of the last segment of a dotted key path, best effort.
pub(super) fn find_line(text: &str, path: &str) -> Option<usize> {
    let key = path.rsplit('.').find(|p| p.parse::<usize>().is_err())?;
    text.lines()
        .position(|line| {
            let l = line.trim_start();
            let l = l.trim_start_matches('[').trim_start();
            l.starts_with(key) && l[key.len()..].trim_start().starts_with(['=', ']', '.'])
        })
        .map(|i| i + 1)
}
