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
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::wal::SyncMode;

mod env;
#[cfg(test)]
mod tests;
mod units;

use env::{ENV_KEYS, Kind, expand_vars, find_line, set_path};
pub use units::{ByteSize, Dur, Secrets};

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

/// `[retention]`: off unless set; nothing expires by default.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RetentionSection {
    /// Days of history kept in every table: hourly partitions that ended longer ago
    /// are dropped.
    pub days: Option<u32>,
    /// Days per table (`[retention.tables] outcomes = 7`), overriding `days`.
    pub tables: std::collections::BTreeMap<String, u32>,
}

impl RetentionSection {
    /// Days kept per table, for the tables that expire.
    pub fn days_per_table(&self) -> Vec<(crate::tables::Table, u32)> {
        crate::tables::Table::ALL
            .iter()
            .filter_map(|t| {
                self.tables
                    .get(t.name())
                    .copied()
                    .or(self.days)
                    .map(|d| (*t, d))
            })
            .collect()
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
    /// zstd level of the files a flush writes (1-22).
    pub zstd_level: i32,
    /// zstd level of the files compaction writes (1-22): they are written once per
    /// hour and kept for the retention period, so more CPU buys smaller files.
    pub compact_zstd_level: i32,
    /// Most of one core (percent, 1-100) that background flushes spend encoding;
    /// they sleep between steps to stay under it, so acknowledgements find an idle
    /// core. Flushes on shutdown run flat out.
    pub flush_cpu_percent: u32,
    /// How often the server merges small files of a partition into one sorted file
    /// (0 turns background compaction off; `hookscope compact` still works).
    pub compact_interval: Dur,
}

impl Default for ParquetSection {
    fn default() -> Self {
        // Level 1 encodes markedly faster than 3 for slightly larger files, and the
        // flush competes with acknowledgements for CPU on small machines
        // (benches/RESULTS.md, "Measurements behind design choices").
        Self {
            zstd_level: 1,
            compact_zstd_level: 3,
            flush_cpu_percent: 50,
            compact_interval: Dur(Duration::from_secs(30)),
        }
    }
}

/// `[alerts]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AlertsSection {
    /// A firing alert is sent again at most this often.
    pub renotify: Dur,
    /// Where notifications go; none configured: the server log.
    pub sinks: Vec<SinkConfig>,
}

impl Default for AlertsSection {
    fn default() -> Self {
        Self {
            renotify: Dur(Duration::from_secs(3600)),
            sinks: Vec::new(),
        }
    }
}

/// `[[alerts.sinks]]`: one destination of alert notifications.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// log, webhook or slack.
    pub kind: String,
    /// The URL to POST to (webhook, slack).
    #[serde(default)]
    pub url: Option<String>,
    /// Extra request headers (webhook), e.g. an API key.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
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
    /// Where alerts go, and how often a firing one is sent again.
    pub alerts: AlertsSection,
    /// Warnings found while loading (unknown keys …), for the caller to log.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The largest `max_body_bytes` accepted: a body is one WAL record (at most 1 GiB)
/// and one value of a string column (at most 2 GiB, and base64 adds a third).
pub(crate) const MAX_BODY_LIMIT: u64 = 256 << 20;

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
            alerts: AlertsSection::default(),
            warnings: Vec::new(),
        }
    }
}

/// True for names that may be a source (`[A-Za-z0-9_.-]{1,64}`); also used for node ids.
pub(crate) fn is_valid_name(name: &str) -> bool {
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
        for (i, sink) in self.alerts.sinks.iter().enumerate() {
            match (sink.kind.as_str(), &sink.url) {
                ("log", _) => {}
                ("webhook" | "slack", Some(url))
                    if url.starts_with("http://") || url.starts_with("https://") => {}
                ("webhook" | "slack", _) => {
                    return Err(invalid(format!(
                        "alerts.sinks[{i}] ({}): needs url = \"http(s)://…\"",
                        sink.kind
                    )));
                }
                (other, _) => {
                    return Err(invalid(format!(
                        "alerts.sinks[{i}]: kind `{other}` is not one of log, webhook, slack"
                    )));
                }
            }
        }
        if self.alerts.renotify.0.is_zero() {
            return Err(invalid(
                "alerts.renotify must be above 0 (e.g. \"1h\")".into(),
            ));
        }
        for (key, level) in [
            ("parquet.zstd_level", self.parquet.zstd_level),
            (
                "parquet.compact_zstd_level",
                self.parquet.compact_zstd_level,
            ),
        ] {
            if !(1..=22).contains(&level) {
                return Err(invalid(format!("{key} {level} must be 1..=22")));
            }
        }
        if !(1..=100).contains(&self.parquet.flush_cpu_percent) {
            return Err(invalid(format!(
                "parquet.flush_cpu_percent {} must be 1..=100 (percent of one core)",
                self.parquet.flush_cpu_percent
            )));
        }
        if self.retention.days == Some(0) || self.retention.tables.values().any(|d| *d == 0) {
            return Err(invalid(
                "retention days must be at least 1 (0 would drop everything); leave it unset to keep everything".into(),
            ));
        }
        if let Some(unknown) = self.retention.tables.keys().find(|k| {
            !crate::tables::Table::ALL
                .iter()
                .any(|t| t.name() == k.as_str())
        }) {
            return Err(invalid(format!(
                "retention.tables.{unknown}: no such table (tables: {})",
                crate::tables::Table::ALL
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(", ")
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
