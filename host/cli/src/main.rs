//! The `capgate` command: parse the command line, start tracing, call into the library.

mod consumer;
mod demo;
mod scaffold;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use capgate_model::config::{Config, LogFormat, Overrides, UpstreamOverride};

#[derive(Parser)]
#[command(
    name = "capgate",
    version,
    about = "Serve Naftiko capabilities as REST routes and MCP tools"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, env = "CAPGATE_LOG_FORMAT")]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every capability in a folder, reloading on change.
    Serve(ServeArgs),
    /// Check capability files and print their diagnostics; exits 1 when any has an error.
    Validate {
        /// Files or folders of capability files.
        #[arg(required_unless_present = "consumers")]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
        /// Exit 1 on warnings too.
        #[arg(long)]
        deny_warnings: bool,
        /// A consumers file to check as well.
        #[arg(long)]
        consumers: Option<PathBuf>,
    },
    /// Run the Stripe stand-in (Identity VerificationSessions) on its own.
    StripeSim {
        #[arg(long, default_value = "127.0.0.1:12111", env = "CAPGATE_SIM_LISTEN")]
        listen: SocketAddr,
    },
    /// Work with transform plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Add consumers and rotate their keys (keys are printed once; the file keeps hashes).
    #[command(subcommand)]
    Consumer(ConsumerCommand),
    /// Run the Stripe stand-in and the gateway on the shipped specs, and print how to try them.
    Demo {
        /// The specs folder.
        #[arg(long, default_value = "specs")]
        specs: PathBuf,
        /// Require a consumer's key on every adapter, with one consumer (`demo`, 1 call per
        /// second, bursts of 5) whose new key is printed.
        #[arg(long)]
        consumer: bool,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a new transform plugin crate that builds as it is.
    New {
        /// The plugin's name (lower-case letters, digits and -).
        name: String,
        /// Where to create it.
        #[arg(long, default_value = "plugins")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConsumerCommand {
    /// Add a consumer with a new API key and one scope, and print the key (once).
    Add {
        name: String,
        /// The consumers file (created if missing).
        #[arg(long, default_value = "consumers.yaml")]
        file: PathBuf,
        /// Glob of the capabilities (file names without extension) it may call.
        #[arg(long, default_value = "*")]
        capability: String,
        /// Glob of the REST or MCP adapter namespaces.
        #[arg(long, default_value = "*")]
        adapter: String,
        /// Glob of the operation or tool names.
        #[arg(long = "operation", default_value = "*")]
        name_glob: String,
        /// read (GET routes, read-only tools), write or any.
        #[arg(long, default_value = "any", value_parser = ["read", "write", "any"])]
        access: String,
    },
    /// Give a consumer a new key; its other keys expire after the grace period.
    Rotate {
        name: String,
        #[arg(long, default_value = "consumers.yaml")]
        file: PathBuf,
        /// Seconds the old keys keep working.
        #[arg(long, default_value_t = 86_400)]
        grace_seconds: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The folder of capability files (default: the config's, else ./specs).
    #[arg(long, env = "CAPGATE_SPECS")]
    specs: Option<PathBuf>,
    /// A gateway config file (YAML).
    #[arg(long, short = 'c', env = "CAPGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen on this address whatever the specs say (for example 0.0.0.0 in a container).
    #[arg(long, env = "CAPGATE_ADDRESS")]
    address: Option<IpAddr>,
    /// Bind a declared port elsewhere: DECLARED=ACTUAL (0 lets the OS choose). Repeatable.
    #[arg(long = "port", value_parser = parse_port_map)]
    ports: Vec<(u16, u16)>,
    /// Point consumes adapters elsewhere: NAMESPACE=URL[,profile=stripe|default]; NAMESPACE may
    /// be a glob such as `*`. Repeatable; in the environment, separate entries with `;`.
    #[arg(long = "upstream", env = "CAPGATE_UPSTREAMS", value_delimiter = ';')]
    upstreams: Vec<String>,
    /// The admin listener address, or `off`.
    #[arg(long, env = "CAPGATE_ADMIN")]
    admin: Option<String>,
    /// Do not watch the specs folder for changes.
    #[arg(long)]
    no_watch: bool,
    /// Threads that answer requests (default: one per CPU this process may run on, which
    /// follows CPU affinity and cgroup limits). `1` runs everything on one thread.
    #[arg(long, env = "CAPGATE_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
}

fn parse_port_map(text: &str) -> Result<(u16, u16), String> {
    let (declared, actual) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid port mapping \"{text}\": expected DECLARED=ACTUAL"))?;
    let parse = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("invalid port \"{s}\" in \"{text}\""))
    };
    Ok((parse(declared)?, parse(actual)?))
}

/// mimalloc: the request path allocates a few dozen small blocks per call; glibc's allocator
/// spent 6 to 7 % of the gateway's CPU on them (BENCHMARKS.md, the proxy hop).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// After each reload, mimalloc collects the reload thread's heap and returns what is free to
/// the system (`malloc_trim`, the gateway's default, does nothing for mimalloc).
#[allow(unsafe_code)]
fn release_reload_memory() {
    // SAFETY: `mi_collect` frees nothing in use; it only returns free pages and segments.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> ExitCode {
    capgate::reload::set_memory_release(release_reload_memory);
    let cli = Cli::parse();
    let workers = match &cli.command {
        Command::Serve(ServeArgs { workers, .. }) => *workers,
        _ => None,
    };
    // One worker is a current-thread runtime: the accept loop, connections, upstream calls and
    // timers share one thread with no cross-thread wake-ups or work-stealing queues (about a
    // quarter more requests per second on one core than a one-worker multi-thread runtime,
    // BENCHMARKS.md). Reloads and plugin compiles run on their own thread either way.
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(workers));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let log_format = cli.log_format;
    match cli.command {
        Command::Serve(args) => {
            let config = serve_config(args)?;
            init_tracing(
                log_format.map(Into::into).unwrap_or(config.log.format),
                config.log.filter.as_deref(),
            );
            capgate::serve(config, shutdown_signal()).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            paths,
            format,
            deny_warnings,
            consumers,
        } => {
            let mut summary = capgate_model::validate::validate(&paths);
            if let Some(consumers) = &consumers {
                summary = summary.with_consumers_file(consumers);
            }
            let text = match format {
                OutputFormat::Text => summary.render_text(),
                OutputFormat::Json => {
                    format!("{}\n", serde_json::to_string_pretty(&summary.to_json())?)
                }
            };
            // A reader that stops early (`| head`) is not an error of ours.
            use std::io::Write as _;
            if let Err(error) = std::io::stdout().lock().write_all(text.as_bytes())
                && error.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(error.into());
            }
            let failed = summary.tally.errors > 0 || (deny_warnings && summary.tally.warnings > 0);
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::StripeSim { listen } => {
            init_tracing(log_format.map(Into::into).unwrap_or_default(), None);
            stripe_sim::run(listen, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::New { name, dir }) => {
            let root = scaffold::new_plugin(&dir, &name).map_err(anyhow::Error::msg)?;
            println!("created {}", root.display());
            println!(
                "build it:  (cd {} && cargo build --release --target wasm32-wasip2)",
                root.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Consumer(ConsumerCommand::Add {
            name,
            file,
            capability,
            adapter,
            name_glob,
            access,
        }) => {
            let scope = consumer::ScopeArgs {
                capability: &capability,
                adapter: &adapter,
                name: &name_glob,
                access: &access,
            };
            let key = consumer::add(&file, &name, &scope).map_err(anyhow::Error::msg)?;
            println!("added consumer {name} to {}", file.display());
            println!("its API key (shown this once; send it as `Authorization: Bearer <key>`):");
            println!("{key}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Consumer(ConsumerCommand::Rotate {
            name,
            file,
            grace_seconds,
        }) => {
            let grace = std::time::Duration::from_secs(grace_seconds);
            let key = consumer::rotate(&file, &name, grace).map_err(anyhow::Error::msg)?;
            println!("new API key for {name} (its other keys stop working in {grace_seconds} s):");
            println!("{key}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { specs, consumer } => {
            init_tracing(log_format.map(Into::into).unwrap_or_default(), None);
            demo::run(specs, consumer, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl From<LogFormatArg> for LogFormat {
    fn from(value: LogFormatArg) -> Self {
        match value {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

fn serve_config(args: ServeArgs) -> anyhow::Result<Config> {
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let upstreams = args
        .upstreams
        .iter()
        .filter(|t| !t.trim().is_empty())
        .map(|t| UpstreamOverride::parse(t.trim()).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let admin = match args.admin.as_deref() {
        None => None,
        Some("off") => Some(None),
        Some(text) => Some(Some(text.parse().map_err(|_| {
            anyhow::anyhow!("invalid admin address \"{text}\": expected IP:PORT or off")
        })?)),
    };
    Ok(config.with_overrides(Overrides {
        specs: args.specs,
        force_address: args.address,
        ports: args.ports,
        upstreams,
        admin,
        no_watch: args.no_watch,
    }))
}

fn init_tracing(format: LogFormat, filter: Option<&str>) {
    let requested = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| filter.map(str::to_owned))
        .unwrap_or_else(|| "info".to_owned());
    let payloads = std::env::var(LOG_MCP_PAYLOADS).is_ok_and(|v| v == "1");
    let (filter, dropped) = log_filter(&requested, payloads);
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if !dropped.is_empty() {
        tracing::warn!(
            ?dropped,
            "rmcp log directives ignored: below info, rmcp logs whole tool arguments and results; set {LOG_MCP_PAYLOADS}=1 to allow them"
        );
    }
    if payloads {
        tracing::warn!(
            "{LOG_MCP_PAYLOADS}=1: rmcp may log whole MCP messages, tool arguments and results (secrets, personal data) at debug level"
        );
    }
}

/// The setting that lets rmcp log below `info`, where it logs whole MCP messages.
const LOG_MCP_PAYLOADS: &str = "CAPGATE_UNSAFE_LOG_MCP_PAYLOADS";

/// The `tracing` filter for `requested`: unless `payloads`, rmcp is held at `info` at most
/// whatever was asked (its `debug` and `trace` events carry whole tool arguments and results),
/// and the directives that asked for more are returned to be reported. Asking for less (a
/// global `warn`, `rmcp=error`) is honoured.
fn log_filter(requested: &str, payloads: bool) -> (String, Vec<String>) {
    if payloads {
        return (requested.to_owned(), Vec::new());
    }
    let quiet = |level: &str| {
        matches!(
            level.to_ascii_lowercase().as_str(),
            "off" | "error" | "warn"
        )
    };
    let (mut kept, mut dropped) = (Vec::new(), Vec::new());
    let mut rmcp = "info".to_owned();
    for directive in requested
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        if let Some(level) = directive.strip_prefix("rmcp=") {
            if quiet(level) {
                rmcp = level.to_owned();
            } else if !level.eq_ignore_ascii_case("info") {
                dropped.push(directive.to_owned());
            }
        } else if directive.starts_with("rmcp") {
            dropped.push(directive.to_owned());
        } else {
            if !directive.contains('=') && quiet(directive) && rmcp == "info" {
                rmcp = directive.to_owned();
            }
            kept.push(directive.to_owned());
        }
    }
    kept.push(format!("rmcp={rmcp}"));
    (kept.join(","), dropped)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn rmcp_stays_at_info_unless_payload_logging_is_asked_for() {
        assert_eq!(log_filter("debug", false).0, "debug,rmcp=info");
        let (filter, dropped) = log_filter("info, rmcp=trace,capgate=debug", false);
        assert_eq!(filter, "info,capgate=debug,rmcp=info");
        assert_eq!(dropped, ["rmcp=trace"]);
        assert_eq!(log_filter("rmcp=trace", true).0, "rmcp=trace");
        // Less is honoured: a quiet process keeps rmcp quiet too.
        assert_eq!(log_filter("error", false).0, "error,rmcp=error");
        assert_eq!(
            log_filter("info,rmcp=warn", false),
            ("info,rmcp=warn".to_owned(), vec![])
        );
    }
}
