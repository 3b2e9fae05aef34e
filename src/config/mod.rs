//! Configuration: `hookscope.toml`, every key optional, overridable by
//! `HOOKSCOPE_*` environment variables, with `${VAR}` in values read from the
//! environment.
//!
//! Invariants:
//! - Defaults alone give a working server (127.0.0.1:8080, `./data/lake`).
//! - Unknown keys never stop the server: they come back as warnings naming the key,
//!   the file and the line, so a config written for a later version still starts.
//! - Values that are present but wrong (a bad duration, an invalid source name) are
//!   errors that say which key and what is expected.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::wal::SyncMode;

/// Errors loading the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration in {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("environment variable {var}={value:?} is not valid for {key}: expected {expected}")]
    Env {
        var: &'static str,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// A duration written as `"250ms"`, `"10s"`, `"5m"`, `"1h"`, `"7d"` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// A size written as a number of bytes or `"10MiB"`, `"1GiB"`, `"512KiB"`, `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// Parses a duration: `"250ms"`, `"10s"`, `"5m"`, `"1h30m"`, `"7d"` (humantime), or a
/// number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| {
        format!(
            "invalid duration {s:?} ({e}): expected e.g. \"500ms\", \"10s\", \"5m\", \"1h\", \"7d\""
        )
    })
}

/// Parses a size: a number of bytes or `"10MiB"`, `"1GiB"`, `"512KiB"`, `"1GB"`
/// (bytesize).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| {
            format!("invalid size {s:?} ({e}): expected bytes or e.g. \"10MiB\", \"1GiB\"")
        })
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl Serialize for Secrets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Never the secrets themselves.
        s.collect_seq(self.0.iter().map(|_| "[redacted]"))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like \"10s\", \"5m\", \"1h\" or a number of seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|s| Dur(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_secs(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Duration::try_from_secs_f64(v)
                    .map(Dur)
                    .map_err(|_| E::custom("invalid duration"))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"10MiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// One secret or several (rotation): `secret = "a"` or `secret = ["new", "old"]`;
/// empty ones (an unset `${VAR}`) are dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets(pub Vec<String>);

impl<'de> Deserialize<'de> for Secrets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[serde_with::serde_as]
        #[derive(Deserialize)]
        #[serde(transparent)]
        struct OneOrMany(#[serde_as(as = "serde_with::OneOrMany<_>")] Vec<String>);
        let OneOrMany(all) = OneOrMany::deserialize(d)?;
        Ok(Secrets(all.into_iter().filter(|s| !s.is_empty()).collect()))
    }
}

impl Secrets {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[wal]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct WalSection {
    pub sync: SyncMode,
    pub segment_max_bytes: ByteSize,
    /// How long a group commit may wait for more appends under concurrent load
    /// (`"0"` turns the wait off).
    pub commit_delay: Dur,
}

impl Default for WalSection {
    fn default() -> Self {
        Self {
            sync: SyncMode::Always,
            segment_max_bytes: ByteSize(64 << 20),
            commit_delay: Dur(crate::wal::DEFAULT_COMMIT_DELAY),
        }
    }
}

/// `[buffer]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct BufferSection {
    /// Flush when the oldest buffered row is this old.
    pub flush_interval: Dur,
    /// Flush at this many buffered rows.
    pub max_rows: usize,
    /// Flush at this many buffered bytes; refuse ingest (503) at 4× while flushes fail.
    pub max_bytes: ByteSize,
}

impl Default for BufferSection {
    fn default() -> Self {
        Self {
            flush_interval: Dur(Duration::from_secs(10)),
            max_rows: 100_000,
            max_bytes: ByteSize(128 << 20),
        }
    }
}

/// `[query]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct QuerySection {
    pub timeout: Dur,
    pub memory_limit: ByteSize,
    pub max_result_bytes: ByteSize,
}

impl Default for QuerySection {
    fn default() -> Self {
        Self {
            timeout: Dur(Duration::from_secs(30)),
            memory_limit: ByteSize(1 << 30),
            max_result_bytes: ByteSize(256 << 20),
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AuthSection {
    pub token: Option<String>,
}

/// `[retention]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RetentionSection {
    pub days: u32,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self { days: 30 }
    }
}

/// `[dedup]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DedupSection {
    /// How long an arrival is remembered for attempt counting.
    pub window: Dur,
    /// Most arrivals remembered (≈ 70 bytes each).
    pub max_keys: usize,
}

impl Default for DedupSection {
    fn default() -> Self {
        Self {
            window: Dur(Duration::from_secs(7 * 86400)),
            max_keys: 1_000_000,
        }
    }
}

/// `[parquet]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ParquetSection {
    /// zstd level of lake files (1-22).
    pub zstd_level: i32,
    /// Most of one core (percent, 1-100) that background flushes spend encoding;
    /// they sleep between steps to stay under it, so acknowledgements find an idle
    /// core. Flushes on shutdown run flat out.
    pub flush_cpu_percent: u32,
}

impl Default for ParquetSection {
    fn default() -> Self {
        // Level 1 encodes ~1.3-1.5x faster than 3 for a few percent larger files; the
        // flush competes with acknowledgements for CPU on small machines.
        Self {
            zstd_level: 1,
            flush_cpu_percent: 50,
        }
    }
}

/// `[[sources]]`: one webhook source.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct SourceConfig {
    pub name: String,
    pub provider: Option<String>,
    pub secret: Secrets,
    pub require_signature: bool,
    pub tolerance: Dur,
    pub required_fields: Vec<String>,
    pub forward_to: Option<String>,
    pub forward_timeout: Dur,
    pub public_url: Option<String>,
    pub token_header: Option<String>,
    pub signature_header: Option<String>,
    pub algorithm: Option<String>,
    pub encoding: Option<String>,
    pub prefix: Option<String>,
    pub redact_headers: Vec<String>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            provider: None,
            secret: Secrets::default(),
            require_signature: false,
            tolerance: Dur(Duration::from_secs(300)),
            required_fields: Vec::new(),
            forward_to: None,
            forward_timeout: Dur(Duration::from_secs(30)),
            public_url: None,
            token_header: None,
            signature_header: None,
            algorithm: None,
            encoding: None,
            prefix: None,
            redact_headers: Vec::new(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    /// Object-store URL for the lake; only local directories are supported so far.
    pub storage: Option<String>,
    pub node_id: String,
    pub max_body_bytes: ByteSize,
    pub strict_sources: bool,
    pub queries_dirs: Vec<PathBuf>,
    /// Header holding the client address when behind a trusted proxy
    /// (e.g. `x-forwarded-for`); its first entry becomes `remote_addr`.
    pub remote_addr_header: Option<String>,
    pub log_format: LogFormat,
    pub wal: WalSection,
    pub buffer: BufferSection,
    pub query: QuerySection,
    pub auth: AuthSection,
    pub retention: RetentionSection,
    pub dedup: DedupSection,
    pub parquet: ParquetSection,
    pub sources: Vec<SourceConfig>,
    /// Alert routing; read by the alerting step.
    pub alerts: Option<toml::Table>,
    /// Warnings found while loading (unknown keys …), for the caller to log.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The largest `max_body_bytes` accepted: a body is one WAL record (at most 1 GiB)
/// and one value of a string column (at most 2 GiB, and base64 adds a third).
pub const MAX_BODY_LIMIT: u64 = 256 << 20;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("data/lake"),
            storage: None,
            node_id: "node-1".into(),
            max_body_bytes: ByteSize(10 << 20),
            strict_sources: false,
            queries_dirs: vec![PathBuf::from("queries")],
            remote_addr_header: None,
            log_format: LogFormat::Text,
            wal: WalSection::default(),
            buffer: BufferSection::default(),
            query: QuerySection::default(),
            auth: AuthSection::default(),
            retention: RetentionSection::default(),
            dedup: DedupSection::default(),
            parquet: ParquetSection::default(),
            sources: Vec::new(),
            alerts: None,
            warnings: Vec::new(),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    /// Comma-separated.
    List,
}

/// Keys read but not yet acted on, and what they will do.
const NOT_YET_SUPPORTED: &[(&str, &str)] = &[
    ("retention", "expiring old partitions"),
    ("queries_dirs", "saved queries"),
    ("alerts", "alert sinks"),
];

/// Environment overrides: variable, config key path, value kind.
const ENV_KEYS: &[(&str, &str, Kind)] = &[
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
    ("HOOKSCOPE_DEDUP_WINDOW", "dedup.window", Kind::Str),
    ("HOOKSCOPE_DEDUP_MAX_KEYS", "dedup.max_keys", Kind::Int),
    (
        "HOOKSCOPE_PARQUET_ZSTD_LEVEL",
        "parquet.zstd_level",
        Kind::Int,
    ),
    (
        "HOOKSCOPE_PARQUET_FLUSH_CPU_PERCENT",
        "parquet.flush_cpu_percent",
        Kind::Int,
    ),
];

/// True for names that may be a source (`[A-Za-z0-9_.-]{1,64}`); also used for node ids.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && name != "."
        && name != ".."
}

impl Config {
    /// Loads the configuration: `path` if given, else `$HOOKSCOPE_CONFIG`, else
    /// `./hookscope.toml` if it exists, else defaults; then environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &|k| std::env::var(k).ok())
    }

    /// [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let chosen: Option<PathBuf> = match path {
            Some(p) => Some(p.to_path_buf()),
            None => match env("HOOKSCOPE_CONFIG") {
                Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
                _ => {
                    let default = PathBuf::from("hookscope.toml");
                    default.exists().then_some(default)
                }
            },
        };
        let (text, label) = match &chosen {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "<defaults>".to_string()),
        };
        Self::from_toml(&text, &label, env)
    }

    /// Parses configuration text; `label` names it in messages.
    pub fn from_toml(
        text: &str,
        label: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: label.to_string(),
            message: e.to_string(),
        })?;
        let mut warnings = Vec::new();
        expand_vars(&mut table, env, &mut warnings);
        for (var, key, kind) in ENV_KEYS {
            if let Some(value) = env(var) {
                let v = match kind {
                    Kind::Str => toml::Value::String(value.clone()),
                    Kind::Int => toml::Value::Integer(value.trim().parse().map_err(|_| {
                        ConfigError::Env {
                            var,
                            key,
                            value: value.clone(),
                            expected: "an integer",
                        }
                    })?),
                    Kind::List => toml::Value::Array(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|v| !v.is_empty())
                            .map(|v| toml::Value::String(v.to_string()))
                            .collect(),
                    ),
                    Kind::Bool => toml::Value::Boolean(match value.trim() {
                        "1" | "true" | "yes" => true,
                        "0" | "false" | "no" | "" => false,
                        _ => {
                            return Err(ConfigError::Env {
                                var,
                                key,
                                value,
                                expected: "true or false",
                            });
                        }
                    }),
                };
                set_path(&mut table, key, v);
            }
        }
        for (key, what) in NOT_YET_SUPPORTED {
            if table.contains_key(*key) {
                warnings.push(format!(
                    "{label}: `{key}` is not yet supported and has no effect yet ({what})"
                ));
            }
        }
        let mut unknown = Vec::new();
        let mut config: Config = serde_ignored::deserialize(toml::Value::Table(table), |path| {
            unknown.push(path.to_string())
        })
        .map_err(|e: toml::de::Error| ConfigError::Invalid {
            path: label.to_string(),
            message: e.to_string(),
        })?;
        let mut located: Vec<(Option<usize>, String)> = unknown
            .into_iter()
            .map(|key| (find_line(text, &key), key))
            .collect();
        located.sort();
        for (line, key) in located {
            let line = line.map(|n| format!(":{n}")).unwrap_or_default();
            warnings.push(format!("{label}{line}: unknown key `{key}` ignored"));
        }
        config.warnings = warnings;
        config.validate(label)?;
        Ok(config)
    }

    fn validate(&mut self, label: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: label.to_string(),
            message,
        };
        if !is_valid_name(&self.node_id) {
            return Err(invalid(format!(
                "node_id {:?} must match [A-Za-z0-9_.-]{{1,64}} (it is part of file names)",
                self.node_id
            )));
        }
        if let Some(storage) = &self.storage {
            match storage.strip_prefix("file://") {
                Some(dir) => self.data_dir = PathBuf::from(dir),
                None => {
                    return Err(invalid(format!(
                        "storage {storage:?} is not supported yet: use a local data_dir (or file:///path)"
                    )));
                }
            }
        }
        if self
            .auth
            .token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            self.auth.token = None;
        }
        if self.max_body_bytes.0 > MAX_BODY_LIMIT {
            return Err(invalid(format!(
                "max_body_bytes {} is above the most hookscope can record in one WAL record ({MAX_BODY_LIMIT} bytes, 256 MiB)",
                self.max_body_bytes.0
            )));
        }
        if self.buffer.max_rows == 0 {
            return Err(invalid("buffer.max_rows must be at least 1".into()));
        }
        if !(1..=22).contains(&self.parquet.zstd_level) {
            return Err(invalid(format!(
                "parquet.zstd_level {} must be 1..=22",
                self.parquet.zstd_level
            )));
        }
        if !(1..=100).contains(&self.parquet.flush_cpu_percent) {
            return Err(invalid(format!(
                "parquet.flush_cpu_percent {} must be 1..=100 (percent of one core)",
                self.parquet.flush_cpu_percent
            )));
        }
        let mut seen = HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            if !is_valid_name(&s.name) {
                return Err(invalid(format!(
                    "sources[{i}].name {:?} must match [A-Za-z0-9_.-]{{1,64}}",
                    s.name
                )));
            }
            if !seen.insert(s.name.clone()) {
                return Err(invalid(format!("source {:?} is configured twice", s.name)));
            }
        }
        Ok(())
    }

    /// The configured source named `name`.
    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.name == name)
    }
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) {
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
fn expand_vars(
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

fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>, warnings: &mut Vec<String>) -> String {
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
fn find_line(text: &str, path: &str) -> Option<usize> {
    let key = path.rsplit('.').find(|p| p.parse::<usize>().is_err())?;
    text.lines()
        .position(|line| {
            let l = line.trim_start();
            let l = l.trim_start_matches('[').trim_start();
            l.starts_with(key) && l[key.len()..].trim_start().starts_with(['=', ']', '.'])
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
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
        // Only the keys whose features have not landed yet are warned about.
        assert!(
            c.warnings.iter().all(|w| w.contains("not yet supported")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn unknown_keys_are_warnings_with_file_and_line() {
        let text =
            "listen = \"127.0.0.1:9\"\ncolour = \"blue\"\n[buffer]\nmax_rows = 5\nturbo = true\n";
        let c = Config::from_toml(text, "hookscope.toml", &no_env).unwrap();
        assert_eq!(c.buffer.max_rows, 5);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("hookscope.toml:2") && c.warnings[0].contains("colour"));
        assert!(
            c.warnings[1].contains("hookscope.toml:5") && c.warnings[1].contains("buffer.turbo")
        );
    }

    #[test]
    fn env_overrides_file_values() {
        let env = |k: &str| match k {
            "HOOKSCOPE_BUFFER_MAX_ROWS" => Some("42".to_string()),
            "HOOKSCOPE_WAL_SYNC" => Some("none".to_string()),
            "HOOKSCOPE_WAL_COMMIT_DELAY" => Some("0".to_string()),
            "HOOKSCOPE_DATA_DIR" => Some("/tmp/lake".to_string()),
            "HOOKSCOPE_PARQUET_FLUSH_CPU_PERCENT" => Some("30".to_string()),
            _ => None,
        };
        let c = Config::from_toml("[buffer]\nmax_rows = 7\n", "f", &env).unwrap();
        assert_eq!(c.buffer.max_rows, 42);
        assert_eq!(c.parquet.flush_cpu_percent, 30);
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

    /// Dotted paths of every scalar or list key under `value` (not `sources`/`alerts`:
    /// tables configured in the file only).
    fn key_paths(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    if prefix.is_empty() && (k == "sources" || k == "alerts") {
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
    fn keys_not_yet_acted_on_are_reported() {
        let c = Config::from_toml(
            "queries_dirs = [\"q\"]\n[retention]\ndays = 3\n",
            "f",
            &no_env,
        )
        .unwrap();
        let said = c.warnings.join("\n");
        assert!(said.contains("`retention` is not yet supported"), "{said}");
        assert!(
            said.contains("`queries_dirs` is not yet supported"),
            "{said}"
        );
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
}
