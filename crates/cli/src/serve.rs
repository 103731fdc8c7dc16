//! `unbroken serve`: wire the configuration to `gateway::run`. No logic of its own.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use anyhow::{Context as _, bail};
use gateway::config::{ModelConfig, ProviderConfig, StoreKind, TargetConfig};
use gateway::{AppState, Config};
use providers::Provider;

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
    /// The stream log: `memory`, `sqlite:PATH` or a `redis://` URL (overrides [store]).
    #[arg(long, value_name = "memory|sqlite:PATH|redis://…")]
    store: Option<String>,
    /// Allow a non-loopback address with no API keys configured.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// The GGUF file of the built-in model `smollm2`, served when the configuration has
    /// no [[models]] (default: the file scripts/fetch-model puts in the model cache).
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
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
        Some(url)
            if ["redis://", "rediss://", "redis+unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme)) =>
        {
            config.store.kind = StoreKind::Redis;
            url.clone_into(&mut config.store.url);
        }
        Some(other) => match other.strip_prefix("sqlite:") {
            Some(path) if !path.is_empty() => {
                config.store.kind = StoreKind::Sqlite;
                config.store.path = PathBuf::from(path);
            }
            _ => bail!("--store must be `memory`, `sqlite:PATH` or a redis:// URL, not {other:?}"),
        },
    }
    if config.models.is_empty() {
        // The embedded default: the local model, so a fresh install answers offline.
        let target = serde_json::json!({ "provider": "local", "path": args.model });
        config.models.push(ModelConfig {
            name: local::MODEL_ID.to_owned(),
            targets: vec![serde_json::from_value::<TargetConfig>(target)?],
            deadline_ms: None,
            fallback_on: Vec::new(),
        });
    } else if args.model.is_some() {
        bail!(
            "--model applies only without [[models]] in the configuration; set `path` on a local target instead"
        );
    }
    let log = gateway::open_log(&config.store).map_err(anyhow::Error::msg)?;
    let state = AppState::with_local(&config, log, &load_local).map_err(anyhow::Error::msg)?;
    let listen = config.server.listen;
    if !state.auth_enabled() {
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
    gateway::check_tls(&config.server).map_err(anyhow::Error::msg)?;
    let listener = gateway::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    // Whoever started us may stop reading stdout; that must not stop the gateway.
    let mut out = std::io::stdout().lock();
    let scheme = if config.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let _ = writeln!(out, "unbroken listening on {scheme}://{local}");
    let _ = writeln!(out, "  chat UI: {scheme}://{local}/");
    let _ = writeln!(
        out,
        "  OpenAI-compatible API: {scheme}://{local}/v1 (models: {})",
        state.models.names().join(", ")
    );
    let _ = out.flush();
    drop(out);
    gateway::run(listener, state, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Build a `provider = "local"` target: load its GGUF file.
fn load_local(target: &TargetConfig, key: &str) -> Result<Arc<dyn Provider>, String> {
    let ProviderConfig::Local(target) = &target.provider else {
        return Err(format!("{key}: not a local target"));
    };
    let path = target
        .path
        .clone()
        .unwrap_or_else(local::default_model_path);
    let options = local::LocalOptions {
        threads: target.threads.unwrap_or(0),
        ..local::LocalOptions::default()
    };
    let started = std::time::Instant::now();
    let provider = local::LocalProvider::load(&path, options).map_err(|e| format!("{key}: {e}"))?;
    tracing::info!(path = %path.display(), elapsed = ?started.elapsed(), "local model loaded");
    Ok(Arc::new(provider))
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
