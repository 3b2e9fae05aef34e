//! The `hookscope` binary: parses flags, loads configuration, starts logging and runs
//! one command. The work lives in the library.

use std::process::ExitCode;

// glibc malloc took ~9% of ingest CPU in profiles (many small, short-lived strings).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    // Part of the mimalloc C library linked by the `mimalloc` crate.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (the version the crate builds).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// mimalloc returns freed memory to the OS after 10 ms by default. A flush frees the
/// whole buffer at once and the buffer refills at once, so that churn meant page
/// faults and address-space lock contention on the ingest path (acks stalled for tens
/// of ms). Keep freed memory for 1 s instead.
fn tune_allocator() {
    // SAFETY: sets a mimalloc option; called before any other thread starts.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
}

use clap::Parser;
use hookscope::cli::{self, Cli, Command};
use hookscope::config::{Config, LogFormat};
use hookscope::server::{self, ServeOptions};

fn main() -> ExitCode {
    tune_allocator();
    let args = Cli::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    let default_level = match args.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    init_logging(config.log_format, default_level);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hookscope")
        .build()?;
    match args.command {
        Command::Serve(serve) => {
            if let Some(dir) = serve.data_dir {
                config.data_dir = dir;
            }
            if let Some(listen) = serve.listen {
                config.listen = listen;
            }
            runtime.block_on(server::serve(
                config,
                ServeOptions {
                    insecure: serve.insecure,
                },
            ))
        }
        Command::Query(query) => {
            if let Some(dir) = &query.data_dir {
                config.data_dir = dir.clone();
            }
            runtime.block_on(cli::query::run(query, config))
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("HOOKSCOPE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
