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
    /// Refuse requests with this HTTP status, in OpenAI's error shape (fault injection).
    #[arg(long, value_name = "STATUS", value_parser = clap::value_parser!(u16).range(400..=599))]
    error_status: Option<u16>,
    /// The chance that a request is refused with --error-status, from 0 to 1
    /// (reproducible for a --seed).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 1.0,
        requires = "error_status"
    )]
    error_probability: f64,
    /// Refuse only the first N requests ("429, then 200").
    #[arg(long, value_name = "N", requires = "error_status")]
    error_times: Option<u32>,
    /// The `Retry-After` sent with refusals, in seconds.
    #[arg(long, value_name = "SECONDS", requires = "error_status")]
    retry_after: Option<u64>,
    /// The convention a continued request must follow: none (refuse every prefill, as
    /// OpenAI and current Claude models do), assistant_message, prefix_flag (DeepSeek,
    /// Mistral) or continue_final_message (vLLM).
    #[arg(long, value_name = "MODE", default_value = "assistant_message", value_parser = parse_continuation)]
    continuation: providers::Continuation,
}

fn parse_continuation(mode: &str) -> Result<providers::Continuation, String> {
    serde_json::from_value(serde_json::Value::String(mode.to_owned())).map_err(|_| {
        "one of none, assistant_message, prefix_flag, continue_final_message".to_owned()
    })
}

/// Serve until SIGINT or SIGTERM.
///
/// # Errors
/// A probability outside 0..=1; an address that cannot be bound.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.error_probability) {
        anyhow::bail!("--error-probability must be between 0 and 1");
    }
    let config = SimulatorConfig {
        tokens: args.tokens,
        ttft_ms: args.ttft_ms,
        interval_ms: args.interval_ms,
        seed: args.seed,
        fail_after: args.fail_after,
        error_status: args.error_status,
        error_probability: args.error_probability,
        error_times: args.error_times,
        retry_after_s: args.retry_after,
        continuation: args.continuation,
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
