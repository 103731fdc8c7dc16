//! Reading the scripts' answers: values, and refusals as the log's errors.

use redis::Value;

use crate::error::LogError;
use crate::id::StreamId;
use crate::record::{FencingToken, StreamState};

pub(super) fn storage(error: redis::RedisError) -> LogError {
    LogError::Storage(Box::new(error))
}

pub(super) fn corrupt(what: &str) -> LogError {
    LogError::Corrupt(format!("redis: {what}"))
}

/// A script's answer: its status word and the values after it.
pub(super) fn answer(value: Value) -> Result<(String, Vec<Value>), LogError> {
    let Value::Array(mut items) = value else {
        return Err(corrupt("a script answered a non-array"));
    };
    if items.is_empty() {
        return Err(corrupt("a script answered nothing"));
    }
    let status = text(&items.remove(0))?;
    Ok((status, items))
}

pub(super) fn text(value: &Value) -> Result<String, LogError> {
    match value {
        Value::BulkString(bytes) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(n) => Ok(n.to_string()),
        Value::Nil => Ok(String::new()),
        _ => Err(corrupt("expected a string")),
    }
}

pub(super) fn number(value: &Value) -> Result<u64, LogError> {
    match value {
        Value::Int(n) => u64::try_from(*n).map_err(|_| corrupt("negative number")),
        other => text(other)?
            .parse::<f64>()
            .ok()
            .filter(|n| *n >= 0.0)
            .map(|n| n as u64)
            .ok_or_else(|| corrupt("expected a number")),
    }
}

pub(super) fn value_at(values: &[Value], i: usize) -> Result<&Value, LogError> {
    values
        .get(i)
        .ok_or_else(|| corrupt("a short script answer"))
}

/// Turn a script's refusal into the log's error for stream `id` (`token` presented).
pub(super) fn refusal(
    id: StreamId,
    token: FencingToken,
    status: &str,
    values: &[Value],
) -> LogError {
    match status {
        "notfound" => LogError::NotFound(id),
        "cancel" => LogError::CancelRequested(id),
        "exists" => LogError::AlreadyExists(id),
        "finished" => {
            let state = values
                .first()
                .and_then(|v| number(v).ok())
                .and_then(|n| StreamState::from_i64(n as i64))
                .unwrap_or(StreamState::Finished);
            LogError::AlreadyFinished { id, state }
        }
        "stale" => LogError::StaleToken {
            id,
            presented: token,
            current: values.first().and_then(|v| number(v).ok()),
        },
        "held" => LogError::LeaseHeld {
            id,
            holder: values
                .first()
                .and_then(|v| text(v).ok())
                .unwrap_or_default(),
            expires_at_ms: values.get(1).and_then(|v| number(v).ok()).unwrap_or(0),
        },
        other => corrupt(&format!("unknown script answer {other:?}")),
    }
}
