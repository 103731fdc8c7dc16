//! `unbroken serve`: wire the configuration to `gateway::run`. No logic of its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use gateway::config::StoreKind;
use gateway::{AppState, Config};

/// Arguments of `unbroken serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A TOML configuration file (see docs/CONFIG.md); UNBROKEN__SECTION__KEY
    /// environment variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The stream log: `memory` or `sqlite:PATH` (overrides [store]).
    #[arg(long, value_name = "memory|sqlite:PATH")]
    store: Option<String>,
    /// Allow a non-loopback address with no API keys configured.
    #[arg(long)]
    allow_unauthenticated: bool,
}

/// Run the gateway until SIGINT or SIGTERM.
///
/// # Errors
/// Configuration, store or listener errors, each naming what is wrong.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if args.allow_unauthenticated {
        config.server.allow_unauthenticated = true;
    }
    match args.store.as_deref() {
        None => {}
        Some("memory") => config.store.kind = StoreKind::Memory,
        Some(other) => match other.strip_prefix("sqlite:") {
            Some(path) if !path.is_empty() => {
                config.store.kind = StoreKind::Sqlite;
                config.store.path = PathBuf::from(path);
            }
            _ => bail!("--store must be `memory` or `sqlite:PATH`, not {other:?}"),
        },
    }
    let log = gateway::open_log(&config.store).map_err(anyhow::Error::msg)?;
    let state = AppState::new(&config, log).map_err(anyhow::Error::msg)?;
    let listen = config.server.listen;
    if !state.keys.enabled() {
        if !listen.ip().is_loopback() && !config.server.allow_unauthenticated {
            bail!(
                "no API keys are configured, so unbroken only listens on loopback; \
                 configure [auth] keys or pass --allow-unauthenticated to listen on {listen}"
            );
        }
        eprintln!("unbroken: no API keys configured: every request is the principal `anonymous`");
    }
    if state.models.names().is_empty() {
        eprintln!(
            "unbroken: no models configured; add [[models]] to a config file (docs/CONFIG.md)"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    println!("unbroken listening on http://{local}");
    println!(
        "  OpenAI-compatible API: http://{local}/v1 (models: {})",
        state.models.names().join(", ")
    );
    gateway::run(listener, state, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
