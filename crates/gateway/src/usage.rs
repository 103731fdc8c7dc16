//! The usage ledger: what every answer cost, kept in the stream log itself (one stream per
//! UTC day, written by any node), and the queries `GET /v1/usage` and `unbroken usage`
//! answer from it.
//!
//! An answer's [`Entry`] is appended once it ended, off its path to the client. A query
//! reads the days it spans (at most [`MAX_DAYS`]) and sums per model, target or
//! principal. It also keeps each principal's tokens of the last minute in this process
//! (`[limits] tokens_per_minute`), charged when an answer ends. Tokens are the upstream's (what was paid: a continuation's prompt counts),
//! `requests` counts upstream requests, failed ones included.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use streamlog::{LogError, Record, StreamKind, StreamLog, UpstreamRequest};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::limits::Rates;
use crate::writers::{Writers, find_named_stream, named_stream, namespace};

/// The longest span one query may cover, in days.
pub const MAX_DAYS: u64 = 93;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// One answer's usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// When it ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Who asked.
    pub principal: String,
    /// The client-facing model.
    pub model: String,
    /// The answer's stream.
    pub stream: String,
    /// Its upstream requests.
    pub requests: Vec<UpstreamRequest>,
}

/// How rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// Per client-facing model.
    Model,
    /// Per target.
    Target,
    /// Per principal.
    Principal,
}

/// One row of a usage report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The model, target or principal.
    pub key: String,
    /// Prompt tokens paid.
    pub prompt_tokens: u64,
    /// Completion tokens paid.
    pub completion_tokens: u64,
    /// Upstream requests.
    pub requests: u64,
    /// USD (0 where no price is set).
    pub cost_usd: f64,
}

/// The ledger.
pub struct Ledger {
    log: Arc<dyn StreamLog>,
    node: String,
    writers: Writers,
    /// Each principal's tokens this minute (`[limits] tokens_per_minute`, this process).
    tokens: Rates,
    tokens_per_minute: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Ledger {
    /// A ledger in `log`, written as `node`.
    pub fn new(log: Arc<dyn StreamLog>, node: String) -> Self {
        Self {
            tokens: Rates::tokens(Some(&log)),
            log,
            node,
            writers: Writers::default(),
            tokens_per_minute: 0,
        }
    }

    /// Limit each principal to `per_minute` tokens (0: no limit).
    #[must_use]
    pub fn with_tokens_per_minute(mut self, per_minute: u64) -> Self {
        self.tokens_per_minute = per_minute;
        self
    }

    /// Whether `principal` may start an answer: it has tokens left this minute.
    ///
    /// # Errors
    /// 429 `tokens_rate_limited` with `Retry-After`.
    pub async fn admit(&self, principal: &Principal) -> Result<(), ApiError> {
        self.tokens
            .admit(principal, self.tokens_per_minute, false)
            .await
    }

    /// Charge the tokens of `entry`'s upstream requests to its principal's minute.
    pub async fn charge(&self, entry: &Entry) {
        let tokens = entry.requests.iter().fold(0_u64, |sum, request| {
            sum.saturating_add(request.prompt_tokens)
                .saturating_add(request.completion_tokens)
        });
        self.tokens
            .charge(&entry.principal, self.tokens_per_minute, tokens)
            .await;
    }

    /// Append `entry` to its day.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn record(&self, entry: &Entry) -> Result<(), LogError> {
        let day = named_stream(
            self.log.as_ref(),
            namespace::USAGE.into(),
            &day_name(entry.at_ms / DAY_MS),
            StreamKind::Task,
            namespace::SYSTEM,
        )
        .await?;
        let data = serde_json::to_value(entry)
            .map_err(|_| LogError::InvalidArgument("a usage entry that is not JSON"))?;
        let record = Record::Custom {
            event: "usage".into(),
            data,
        };
        self.writers
            .append(self.log.as_ref(), &self.node, day.id, vec![record], None)
            .await?;
        Ok(())
    }

    /// The rows of entries in `[since_ms, until_ms)`, of `principal` only unless `None`
    /// (everyone's), grouped by `group_by`, largest cost first.
    ///
    /// # Errors
    /// [`LogError::InvalidArgument`] for a span longer than [`MAX_DAYS`]; storage errors.
    pub async fn query(
        &self,
        since_ms: u64,
        until_ms: u64,
        principal: Option<&str>,
        group_by: GroupBy,
    ) -> Result<Vec<Row>, LogError> {
        if until_ms <= since_ms {
            return Ok(Vec::new());
        }
        let (first, last) = (since_ms / DAY_MS, (until_ms - 1) / DAY_MS);
        if last - first >= MAX_DAYS {
            return Err(LogError::InvalidArgument(
                "a usage query spans at most 93 days",
            ));
        }
        let mut rows: BTreeMap<String, Row> = BTreeMap::new();
        for day in first..=last {
            let found = find_named_stream(
                self.log.as_ref(),
                namespace::USAGE.into(),
                &day_name(day),
                StreamKind::Task,
            )
            .await?;
            // No answer ended that day.
            let Some(day) = found else {
                continue;
            };
            let (id, last) = (day.id, day.last_seq);
            // The day's stream stays open: read what it holds now, not what comes later.
            if last == 0 {
                continue;
            }
            let mut records = self.log.read(id, 0).await?;
            while let Some(item) = records.next().await {
                let (seq, record) = item?;
                if seq >= last {
                    if let Record::Custom { data, .. } = record
                        && let Ok(entry) = serde_json::from_value::<Entry>(data)
                    {
                        collect(&mut rows, &entry, (since_ms, until_ms), principal, group_by);
                    }
                    break;
                }
                if let Record::Custom { data, .. } = record
                    && let Ok(entry) = serde_json::from_value::<Entry>(data)
                {
                    collect(&mut rows, &entry, (since_ms, until_ms), principal, group_by);
                }
            }
        }
        let mut rows: Vec<Row> = rows.into_values().collect();
        rows.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd).then(a.key.cmp(&b.key)));
        Ok(rows)
    }
}

/// Add `entry` to `rows` if it lies in `span` and belongs to `principal` (any if `None`).
fn collect(
    rows: &mut BTreeMap<String, Row>,
    entry: &Entry,
    (since_ms, until_ms): (u64, u64),
    principal: Option<&str>,
    group_by: GroupBy,
) {
    if !(since_ms..until_ms).contains(&entry.at_ms)
        || principal.is_some_and(|p| p != entry.principal)
    {
        return;
    }
    for request in &entry.requests {
        let key = match group_by {
            GroupBy::Model => &entry.model,
            GroupBy::Target => &request.target,
            GroupBy::Principal => &entry.principal,
        };
        let row = rows.entry(key.clone()).or_insert_with(|| Row {
            key: key.clone(),
            ..Row::default()
        });
        row.prompt_tokens = row.prompt_tokens.saturating_add(request.prompt_tokens);
        row.completion_tokens = row
            .completion_tokens
            .saturating_add(request.completion_tokens);
        row.requests = row.requests.saturating_add(1);
        row.cost_usd += request.cost_usd.unwrap_or(0.0);
    }
}

fn day_name(day: u64) -> String {
    format!("day-{day}")
}

/// An RFC 3339 time (`2026-12-06T10:00:00Z`) in milliseconds since the Unix epoch.
pub fn parse_time(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_uppercase();
    // A numeric offset (`+01:00`), which humantime does not read: parse the local time as
    // UTC, then take the offset away.
    let (local, offset_ms) = match text.len().checked_sub(6).map(|at| text.split_at(at)) {
        Some((local, offset))
            if local.contains('T')
                && offset.len() == 6
                && matches!(offset.as_bytes()[0], b'+' | b'-')
                && offset.as_bytes()[3] == b':' =>
        {
            let hours: i64 = offset[1..3].parse().ok()?;
            let minutes: i64 = offset[4..6].parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            (format!("{local}Z"), sign * (hours * 60 + minutes) * 60_000)
        }
        _ => (text, 0),
    };
    let time = humantime::parse_rfc3339_weak(&local).ok()?;
    let since = time.duration_since(UNIX_EPOCH).ok()?;
    let ms = i64::try_from(since.as_millis()).ok()?;
    u64::try_from(ms.checked_sub(offset_ms)?).ok()
}

/// Milliseconds since the Unix epoch as RFC 3339.
pub fn format_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_ms: u64, principal: &str, target: &str, tokens: u64, cost: f64) -> Entry {
        Entry {
            at_ms,
            principal: principal.into(),
            model: "m".into(),
            stream: "s".into(),
            requests: vec![UpstreamRequest {
                target: target.into(),
                status: "ok".into(),
                prompt_tokens: tokens,
                completion_tokens: tokens,
                cost_usd: Some(cost),
                ..UpstreamRequest::default()
            }],
        }
    }

    #[tokio::test]
    async fn rows_sum_per_group_within_the_span_and_principal() {
        let log: Arc<dyn StreamLog> =
            Arc::new(streamlog::MemoryLog::new(Arc::new(streamlog::SystemClock)));
        let ledger = Ledger::new(log, "node/1".into());
        let day = 20_000 * DAY_MS;
        for e in [
            entry(day + 5, "alice", "a", 10, 1.0),
            entry(day + 6, "alice", "b", 20, 2.0),
            entry(day + DAY_MS + 1, "bob", "a", 5, 0.5),
            entry(day + 3 * DAY_MS, "bob", "a", 7, 0.7),
        ] {
            ledger.record(&e).await.unwrap();
        }
        let rows = ledger
            .query(day, day + 2 * DAY_MS, None, GroupBy::Target)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].key.as_str(), rows[0].requests), ("b", 1));
        assert_eq!(
            (
                rows[1].key.as_str(),
                rows[1].prompt_tokens,
                rows[1].requests
            ),
            ("a", 15, 2)
        );
        let alice = ledger
            .query(day, day + 10 * DAY_MS, Some("alice"), GroupBy::Principal)
            .await
            .unwrap();
        assert_eq!(alice.len(), 1);
        assert!((alice[0].cost_usd - 3.0).abs() < 1e-9);
        assert!(matches!(
            ledger.query(0, day, None, GroupBy::Model).await,
            Err(LogError::InvalidArgument(_))
        ));
    }

    #[test]
    fn times_are_rfc3339() {
        let ms = parse_time("2026-12-06T10:00:00Z").unwrap();
        assert_eq!(format_time(ms), "2026-12-06T10:00:00.000Z");
        assert_eq!(parse_time("yesterday"), None);
        // Offsets and lowercase letters, as RFC 3339 allows.
        assert_eq!(parse_time("2026-12-06T11:00:00+01:00"), Some(ms));
        assert_eq!(parse_time("2026-12-06T08:30:00-01:30"), Some(ms));
        assert_eq!(parse_time("2026-12-06t10:00:00z"), Some(ms));
        assert_eq!(parse_time("2026-12-06T10:00:00+24:00"), None);
    }
}
