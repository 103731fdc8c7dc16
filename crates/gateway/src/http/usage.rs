//! `GET /v1/usage`: what answers cost, from the usage ledger.
//!
//! `since` and `until` are RFC 3339 times (default: the last 24 hours; at most 93 days),
//! `group_by` is `model` (default), `target` or `principal`. A principal sees its own
//! usage; `principal=all` (everyone's) or another principal's name needs the scope
//! `admin`, and without auth the one principal sees everything.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::state::AppState;
use crate::usage::{self, GroupBy};

/// The query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    since: Option<String>,
    until: Option<String>,
    group_by: Option<GroupBy>,
    principal: Option<String>,
}

/// The handler.
pub async fn usage(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Response, ApiError> {
    let time = |name: &'static str, text: &Option<String>, default: u64| match text {
        None => Ok(default),
        Some(text) => usage::parse_time(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_time",
                format!("{name} must be an RFC 3339 time like 2026-12-06T10:00:00Z"),
            )
        }),
    };
    let until = time("until", &query.until, usage::now_ms())?;
    let since = time(
        "since",
        &query.since,
        until.saturating_sub(24 * 60 * 60 * 1000),
    )?;
    if since >= until {
        return Err(ApiError::bad_request(
            "invalid_time",
            "since must be before until",
        ));
    }
    if (until - since).div_ceil(24 * 60 * 60 * 1000) > usage::MAX_DAYS {
        return Err(ApiError::bad_request(
            "invalid_time",
            format!("a usage query spans at most {} days", usage::MAX_DAYS),
        ));
    }
    let admin = principal.has(crate::auth::Scope::Admin);
    let whose = match query.principal.as_deref() {
        None => Some(principal.as_str()),
        Some(name) if name == principal.as_str() => Some(name),
        Some(_) if !admin => {
            return Err(ApiError::forbidden(
                "insufficient_scope",
                "another principal's usage needs the scope `admin`",
            ));
        }
        Some("all") => None,
        Some(name) => Some(name),
    };
    // Without auth every request is one principal: its usage is everyone's.
    let whose = if state.auth_enabled() { whose } else { None };
    let group_by = query.group_by.unwrap_or(GroupBy::Model);
    let rows = state
        .ledger
        .query(since, until, whose, group_by)
        .await
        .map_err(ApiError::from)?;
    Ok(axum::Json(serde_json::json!({
        "object": "list",
        "since": usage::format_time(since),
        "until": usage::format_time(until),
        "group_by": group_by,
        "data": rows,
    }))
    .into_response())
}
