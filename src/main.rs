//! The `hookscope` binary: parses flags, loads configuration, starts logging and runs
//! one command. The work lives in the library.

use std::process::ExitCode;

// glibc malloc took a large share of ingest CPU in profiles (many small, short-lived
// strings); numbers in benches/RESULTS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Option numbers from mimalloc v3's `mimalloc.h`, the version the crate builds
/// (`libmimalloc-sys` names v2's numbers).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Allocator settings measured on the ingest path (`cargo bench --bench ingest`,
/// numbers in `benches/RESULTS.md`); `MIMALLOC_*` variables in the environment still
/// win.
///
/// - A purge delay of a second instead of mimalloc's default: a flush frees the whole
///   buffer at once and it refills at once, so returning memory to the OS right away
///   meant page faults and address-space lock contention on the ingest path
///   (acknowledgements stalled).
/// - No transparent huge pages: with them, refilling the buffer spent a large share of
///   ingest CPU zeroing huge pages in the kernel (`clear_page_erms`), and the process
///   held more resident memory.
fn tune_allocator() {
    let settings = [
        ("MIMALLOC_PURGE_DELAY", MI_OPTION_PURGE_DELAY, 1000),
        ("MIMALLOC_ALLOW_THP", MI_OPTION_ALLOW_THP, 0),
    ];
    for (env, option, value) in settings {
        if std::env::var_os(env).is_none() {
            // SAFETY: sets a mimalloc option; called before any other thread starts.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
    // mimalloc reads `allow_thp` once, at its first allocation (before `main`), to
    // decide on the process-wide switch; with THP set to `always` that is too late, so
    // flip the switch here as it would have.
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: prctl with integer arguments only; affects this process's THP use.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

use clap::Parser;
use hookscope::cli::{self, Cli, Command};
use hookscope::config::{Config, LogFormat};
use hookscope::http::server::{self, ServeOptions};

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
            if serve.demo {
                for demo in hookscope::simulate::demo_sources() {
                    if !config.sources.iter().any(|s| s.name == demo.name) {
                        config.sources.push(demo);
                    }
                }
            }
            runtime.block_on(server::serve(
                config,
                ServeOptions {
                    insecure: serve.insecure,
                },
            ))
        }
        Command::Query(query) => {
            if let Some(dir) = &query.out.data_dir {
                config.data_dir = dir.clone();
            }
            runtime.block_on(cli::query::run(query, config))
        }
        Command::Bench(bench) => runtime.block_on(cli::bench::run(bench, config)),
        Command::Simulate(simulate) => runtime.block_on(cli::simulate::run(simulate)),
        Command::Queries(queries) => runtime.block_on(cli::queries::run(queries, config)),
        Command::Check(check) => {
            if let Some(dir) = check.data_dir {
                config.data_dir = dir;
            }
            runtime.block_on(cli::check::run(config))
        }
        Command::Import(import) => {
            if let Some(dir) = &import.data_dir {
                config.data_dir = dir.clone();
            }
            runtime.block_on(cli::import::run(import, config))
        }
        Command::Compact(compact) => {
            if let Some(dir) = compact.data_dir {
                config.data_dir = dir;
            }
            runtime.block_on(cli::compact::run(config))
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("HOOKSCOPE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour only on a terminal, never into log files and pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
