//! Path and query extractors whose refusals are OpenAI-shaped errors (axum's own answer
//! a plain-text 400, e.g. for a stream id that is not UTF-8 or a repeated query field),
//! and the [`Principal`] of a request from its `Authorization` header.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use streamlog::Seq;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// [`Path`], refusing with 400 `invalid_path`.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) if rejection.status() == StatusCode::BAD_REQUEST => {
                Err(ApiError::bad_request("invalid_path", rejection.body_text()))
            }
            Err(rejection) => Err(ApiError::internal("path", &rejection.body_text())),
        }
    }
}

/// [`Query`], refusing with 400 `invalid_query`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_query",
                rejection.body_text(),
            )),
        }
    }
}

/// The caller: the principal of the bearer key or token presented, or `anonymous` when
/// auth is off; 401 otherwise.
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !state.auth_enabled() {
            return Ok(state.anonymous.clone());
        }
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start().split_once(' '))
            // The scheme's case does not matter (RFC 9110 §11.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim());
        match presented {
            Some(credential) => state.keys.authenticate(credential),
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// `Last-Event-ID` from the header or else the query; absent or empty means 0 (from the
/// start).
pub fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Result<Seq, ApiError> {
    let header = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        // An empty header says nothing: the query, if any, still counts.
        .filter(|v| !v.is_empty());
    match header.or(query) {
        None | Some("") => Ok(0),
        Some(text) => text.trim().parse::<Seq>().map_err(|_| {
            ApiError::bad_request(
                "invalid_last_event_id",
                "Last-Event-ID must be an event id this stream sent (a decimal number)",
            )
        }),
    }
}

/// Turn the body extractor's refusal into our error shape.
pub fn body_error(rejection: &BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::bad_request("invalid_body", rejection.body_text())
    }
}

/// A JSON whole number: an integer, or a number with no fractional part (`5.0`), as JSON
/// Schema counts them. `None` for anything else, negative numbers included.
pub fn whole_number(value: &serde_json::Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let n = value.as_f64()?;
    // 2^64 as a float: every whole float below it converts exactly.
    (n >= 0.0 && n.fract() == 0.0 && n < 18_446_744_073_709_551_616.0).then_some(n as u64)
}

#[cfg(test)]
mod tests {
    use super::whole_number;
    use serde_json::json;

    #[test]
    fn whole_numbers_may_be_written_as_floats() {
        assert_eq!(whole_number(&json!(5)), Some(5));
        assert_eq!(whole_number(&json!(5.0)), Some(5));
        assert_eq!(whole_number(&json!(5.5)), None);
        assert_eq!(whole_number(&json!(-1)), None);
        assert_eq!(whole_number(&json!(1e30)), None);
        assert_eq!(whole_number(&json!("5")), None);
    }
}
