//! `unbroken simulate`: the simulator as a standalone OpenAI-compatible server — the
//! "direct" baseline of benchmarks and a fake upstream for fault tests. Its answers are
//! synthetic words, not a model's.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use providers::simulator::SimulatorConfig;

/// Arguments of `unbroken simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Tokens per answer.
    #[arg(long, default_value_t = 64)]
    tokens: u32,
    /// Milliseconds before the first token.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    /// Milliseconds between tokens.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Seed of the synthetic text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Cut every answer after this many tokens (fault injection).
    #[arg(long)]
    fail_after: Option<u32>,
}

/// Serve until SIGINT or SIGTERM.
///
/// # Errors
/// When the address cannot be bound.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = SimulatorConfig {
        tokens: args.tokens,
        ttft_ms: args.ttft_ms,
        interval_ms: args.interval_ms,
        seed: args.seed,
        fail_after: args.fail_after,
        ..SimulatorConfig::default()
    };
    let listener =
        gateway::bind(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
        "simulator listening on http://{}/v1",
        listener.local_addr()?
    );
    providers::simulator::serve(listener, config, crate::serve::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
