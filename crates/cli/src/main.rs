//! `unbroken`: the command-line face of the gateway.
//!
//! # Layout
//! - `main.rs`: argument parsing and dispatch (this file); no logic of its own.
//! - [`serve`]: `unbroken serve`, the gateway.
//! - [`chat`]: `unbroken chat`, a streamed question and answer that survives drops.
//! - [`listen`]: `unbroken listen <url>`, a resumable SSE reader printing events.
//! - [`simulate`]: `unbroken simulate`, the simulator as a standalone upstream.
//! - [`bench`]: `unbroken bench`, a load generator for streaming chat completions.
//! - [`takeover_bench`]: `unbroken bench-takeover`, answers in flight through a `kill -9`.
//!
//! The commands are thin shells over the library crates, so tests drive the same code.
// The CLI is the one place that talks to people on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod chat;
mod listen;
mod serve;
mod simulate;
mod takeover_bench;
mod usage;

/// unbroken: AI answers over Server-Sent Events that survive dropped connections.
#[derive(Debug, Parser)]
#[command(name = "unbroken", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(serve::Args),
    /// Read a Server-Sent Events stream, resuming with Last-Event-ID when it drops.
    Listen(listen::Args),
    /// Ask a question and stream the answer; resumes across drops, Ctrl-C cancels.
    Chat(chat::Args),
    /// Serve synthetic answers as an OpenAI-compatible server, for load and fault tests
    /// (not a model).
    Simulate(simulate::Args),
    /// Measure TTFT, inter-token gaps and throughput of streaming chat completions under
    /// concurrent load.
    Bench(bench::Args),
    /// Kill -9 a gateway with answers in flight, restart it, and measure the takeover.
    BenchTakeover(takeover_bench::Args),
    /// Show what answers cost: tokens, requests and USD per model, target or principal.
    Usage(usage::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UNBROKEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("unbroken: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Listen(args) => listen::run(args).await,
            Command::Chat(args) => chat::run(args).await,
            Command::Simulate(args) => simulate::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::BenchTakeover(args) => takeover_bench::run(args).await,
            Command::Usage(args) => usage::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("unbroken: {error:#}");
            ExitCode::FAILURE
        }
    }
}
