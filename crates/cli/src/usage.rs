//! `unbroken usage`: what answers cost, as a table (or the API's JSON with `--json`),
//! from the gateway's `GET /v1/usage`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

/// Arguments of `unbroken usage`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway's address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The environment variable holding the API key.
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// From this RFC 3339 time (default: 24 hours before --until).
    #[arg(long)]
    since: Option<String>,
    /// Until this RFC 3339 time (default: now).
    #[arg(long)]
    until: Option<String>,
    /// Rows per model, target or principal.
    #[arg(long, default_value = "model", value_parser = ["model", "target", "principal"])]
    group_by: String,
    /// Whose usage: yours by default; another principal's or `all` needs an admin.
    #[arg(long)]
    principal: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Run the command.
///
/// # Errors
/// The gateway unreachable, or refusing the query.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut query = vec![("group_by", args.group_by.clone())];
    for (name, value) in [
        ("since", &args.since),
        ("until", &args.until),
        ("principal", &args.principal),
    ] {
        if let Some(value) = value {
            query.push((name, value.clone()));
        }
    }
    let url = reqwest::Url::parse_with_params(
        &format!("{}/v1/usage", args.url.trim_end_matches('/')),
        &query,
    )
    .with_context(|| format!("{} is not a URL", args.url))?;
    let mut request = unbroken_client::chat::http_client()?.get(url);
    if let Some(var) = &args.api_key_env {
        let key = std::env::var(var).with_context(|| format!("{var} is not set"))?;
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {}", args.url))?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        let why =
            unbroken_client::error::error_message(&body).unwrap_or_else(|| status.to_string());
        anyhow::bail!("the gateway refused the usage query: {why}");
    }
    let report: Value = serde_json::from_slice(&body).context("the usage report is not JSON")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report, &args.group_by));
    }
    Ok(ExitCode::SUCCESS)
}

/// The report as aligned columns, with a total line.
fn table(report: &Value, group_by: &str) -> String {
    let rows = report["data"].as_array().cloned().unwrap_or_default();
    let number = |row: &Value, key: &str| row[key].as_u64().unwrap_or(0);
    let cost = |row: &Value| row["cost_usd"].as_f64().unwrap_or(0.0);
    let mut lines = vec![[
        group_by.to_owned(),
        "requests".to_owned(),
        "prompt".to_owned(),
        "completion".to_owned(),
        "cost (USD)".to_owned(),
    ]];
    let mut total = (0, 0, 0, 0.0);
    for row in &rows {
        total.0 += number(row, "requests");
        total.1 += number(row, "prompt_tokens");
        total.2 += number(row, "completion_tokens");
        total.3 += cost(row);
        lines.push([
            row["key"].as_str().unwrap_or_default().to_owned(),
            number(row, "requests").to_string(),
            number(row, "prompt_tokens").to_string(),
            number(row, "completion_tokens").to_string(),
            format!("{:.6}", cost(row)),
        ]);
    }
    lines.push([
        "total".to_owned(),
        total.0.to_string(),
        total.1.to_string(),
        total.2.to_string(),
        format!("{:.6}", total.3),
    ]);
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!(
        "usage from {} to {}\n",
        report["since"].as_str().unwrap_or("?"),
        report["until"].as_str().unwrap_or("?")
    );
    for line in &lines {
        let _ = write!(out, "{:<width$}", line[0], width = widths[0]);
        for (cell, width) in line.iter().zip(&widths).skip(1) {
            let _ = write!(out, "  {cell:>width$}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_columns_and_totals_them() {
        let report = serde_json::json!({
            "since": "2026-12-05T10:00:00.000Z",
            "until": "2026-12-06T10:00:00.000Z",
            "data": [
                {"key": "claude", "requests": 2, "prompt_tokens": 50, "completion_tokens": 16, "cost_usd": 0.00039},
                {"key": "deepseek", "requests": 1, "prompt_tokens": 30, "completion_tokens": 3, "cost_usd": 0.000021},
            ]
        });
        let table = table(&report, "target");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "usage from 2026-12-05T10:00:00.000Z to 2026-12-06T10:00:00.000Z"
        );
        assert!(lines[1].starts_with("target  "), "{table}");
        assert!(lines[2].starts_with("claude  "), "{table}");
        assert!(lines[4].starts_with("total"), "{table}");
        assert!(lines[4].ends_with("0.000411"), "{table}");
        assert!(lines[4].contains("  80  "), "{table}");
        let width = lines[1].len();
        assert!(lines[2..].iter().all(|l| l.len() == width), "{table}");
    }
}
