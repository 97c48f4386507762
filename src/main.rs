//! The `myrmex` command line: a thin shell around the library.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use myrmex::config::{Config, Overrides};
use myrmex::engine::Engine;
use myrmex::server;

#[derive(Parser, Debug)]
#[command(
    name = "myrmex",
    version,
    about = "An MCP server that gives AI agents a real project and workflow orchestration engine"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "MYRMEX_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (default: the platform data directory, e.g. ~/.local/share/myrmex).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Store: `memory`, `sqlite` (myrmex.db in the data directory), `sqlite://PATH` or `postgres://USER@HOST:PORT/DB[?schema=NAME]`.
    #[arg(long, global = true, value_name = "STORE")]
    store: Option<String>,
    /// Log filter (error, warn, info, debug, trace, or directives like `myrmex=debug`). Logs go to stderr.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve MCP: over stdio (the default), or over Streamable HTTP with --http.
    Serve {
        /// Serve Streamable HTTP at /mcp on this address instead of stdio
        /// (without a value: `http.bind` from the configuration, default 127.0.0.1:7341).
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
        http: Option<String>,
        /// Answer tool calls but execute no workflow steps or auto tasks:
        /// `myrmex worker` processes on the same PostgreSQL store do.
        #[arg(long)]
        no_execute: bool,
        /// Tools offered: core, standard, all, or a comma list of tool names (default: `tools.profile`).
        #[arg(long, value_name = "PROFILE")]
        tools: Option<String>,
    },
    /// Execute workflow runs and auto tasks claimed from a PostgreSQL store that
    /// `myrmex serve` processes share; no MCP listener. Stops on SIGTERM/SIGINT
    /// (its runs are taken over by other executors at once).
    Worker,
    /// Write tool-schemas/<tool>.json and MCP_TOOL_SPECIFICATION.md, generated from the code.
    Schemas {
        /// Directory to write into.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// Write nothing; exit 1 if the files in DIR differ from what the code generates.
        #[arg(long)]
        check: bool,
    },
    /// Read a bearer token on stdin and print the SHA-256 to put in `[[auth.tokens]] token_sha256`.
    HashToken,
    /// Validate a workflow file (JSON or YAML): print every problem, or the execution plan.
    Validate {
        /// The workflow file.
        file: PathBuf,
    },
    /// Run a workflow file on the embedded store with a live progress display; print the run as JSON.
    /// Ctrl-C cancels the run.
    Run {
        /// The workflow file.
        file: PathBuf,
        /// A parameter value: KEY=VALUE (VALUE is parsed as JSON when it can be). Repeatable.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("myrmex: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Some(Command::Schemas { out, check }) => {
            if *check {
                let drift = server::catalog::drift(out);
                if drift.is_empty() {
                    eprintln!("tool schemas and specification are up to date");
                    return Ok(ExitCode::SUCCESS);
                }
                for d in &drift {
                    eprintln!("out of date: {d}");
                }
                eprintln!(
                    "run `myrmex schemas --out {}` and commit the result",
                    out.display()
                );
                return Ok(ExitCode::FAILURE);
            }
            for path in server::catalog::write(out)? {
                eprintln!("wrote {}", out.join(path).display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::HashToken) => {
            let mut token = String::new();
            std::io::stdin().read_to_string(&mut token)?;
            let token = token.trim();
            if token.is_empty() {
                anyhow::bail!("no token on stdin");
            }
            println!("{}", server::transport::auth::sha256_hex(token));
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Validate { file }) => {
            let config = load_config(&cli)?;
            Ok(if myrmex::commands::validate(&config, file)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Some(Command::Run { file, params }) => {
            let mut config = load_config(&cli)?;
            if config.log_level == Config::default().log_level {
                // The progress display is the output; only problems are logged.
                config.log_level = "warn".into();
            }
            let params = myrmex::commands::parse_params(params)?;
            myrmex::telemetry::init(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let ok = runtime.block_on(async move {
                let engine = open_engine(config).await?;
                // A peer of the servers on the same store: its run is leased and
                // heartbeated like theirs; it takes no other work over.
                let shutdown = CancellationToken::new();
                engine
                    .start_background(shutdown.clone(), myrmex::engine::observe::peers::Role::Run)
                    .await?;
                let ok = myrmex::commands::run(&engine, file, params).await;
                shutdown.cancel();
                engine.stop();
                engine.wait_idle(std::time::Duration::from_secs(3)).await;
                engine.leave().await;
                ok
            })?;
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Some(Command::Serve {
            http,
            no_execute,
            tools,
        }) => {
            let mut config = load_config(&cli)?;
            if *no_execute {
                config.cluster.execute = false;
                config.validate_cluster()?;
            }
            if let Some(t) = tools {
                config.tools.profile = t.clone();
            }
            serve(config, http.clone())
        }
        Some(Command::Worker) => {
            let mut config = load_config(&cli)?;
            config.cluster.execute = true;
            if !matches!(config.store_spec()?, myrmex::config::StoreSpec::Postgres(_)) {
                anyhow::bail!(
                    "a worker executes work from a PostgreSQL store that servers share; pass --store postgres://..."
                );
            }
            worker(config)
        }
        None => serve(load_config(&cli)?, None),
    }
}

/// The configuration: the file < MYRMEX_* < the global flags.
fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        store: cli.store.clone(),
        log_level: cli.log_level.clone(),
    };
    Config::load(cli.config.as_deref(), &overrides)
}

/// Create the data directory, open the store and build the engine.
async fn open_engine(config: Config) -> anyhow::Result<Engine> {
    let data_dir = config.data_dir()?;
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", data_dir.display()))?;
    let store = myrmex::store::open_configured(&config).await?;
    tracing::info!(store = store.kind(), location = %store.location(), "store open");
    Ok(Engine::new(config, store))
}

fn serve(config: Config, http: Option<String>) -> anyhow::Result<ExitCode> {
    server::profiles::select(&config.tools.profile).map_err(|e| anyhow::anyhow!(e))?;
    myrmex::telemetry::init(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        let bind: Option<SocketAddr> = match http {
            None => None,
            Some(a) => {
                let a = if a.is_empty() {
                    config.http.bind.clone()
                } else {
                    a
                };
                Some(a.parse().map_err(|_| {
                    anyhow::anyhow!("--http '{a}' is not an address like 127.0.0.1:7341")
                })?)
            }
        };
        let engine = open_engine(config).await?;
        let engine_stop = engine.clone();
        let shutdown = CancellationToken::new();
        let role = if bind.is_some() {
            myrmex::engine::observe::peers::Role::ServeHttp
        } else {
            myrmex::engine::observe::peers::Role::Serve
        };
        engine.start_background(shutdown.clone(), role).await?;
        tokio::spawn(watch_signals(shutdown.clone()));
        let served = match bind {
            Some(addr) => server::transport::http::serve(engine, addr, shutdown.clone()).await,
            None => server::transport::stdio::serve(engine, shutdown.clone()).await,
        };
        shutdown.cancel();
        engine_stop.stop();
        engine_stop
            .wait_idle(std::time::Duration::from_secs(3))
            .await;
        engine_stop.leave().await;
        served
    });
    // Do not wait for the blocking stdin reader: end the process now.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result.map(|()| ExitCode::SUCCESS)
}

fn worker(config: Config) -> anyhow::Result<ExitCode> {
    myrmex::telemetry::init(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        let engine = open_engine(config).await?;
        let shutdown = CancellationToken::new();
        engine
            .start_background(
                shutdown.clone(),
                myrmex::engine::observe::peers::Role::Worker,
            )
            .await?;
        tracing::info!(node = engine.runs().node(), "worker started");
        watch_signals(shutdown.clone()).await;
        shutdown.cancel();
        engine.stop();
        // Let the drivers give their leases up.
        engine.wait_idle(std::time::Duration::from_secs(5)).await;
        engine.leave().await;
        anyhow::Ok(())
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result.map(|()| ExitCode::SUCCESS)
}

async fn watch_signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            _ = shutdown.cancelled() => return,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received, shutting down"),
            _ = shutdown.cancelled() => return,
        }
    }
    shutdown.cancel();
}
