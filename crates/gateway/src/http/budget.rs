//! The memory a parsed request body may hold. The body's byte size is capped
//! (`[server] max_body_bytes`), but parsed JSON costs far more than its text for small
//! values: a 0.9 MB chat body of 30,000 tiny messages held about 15 MB while in flight.
//! So before a body is parsed, its values are counted (one pass over the bytes, no
//! allocation), and a body of more than [`MAX_VALUES`] is refused with 413
//! `request_too_complex`. A `serde_json::Value` costs about 80 bytes a value with its
//! map entry or string, so a parsed body holds at most about 4 MB.

use axum::http::StatusCode;

use crate::error::ApiError;

/// The most JSON values (objects, arrays, strings, numbers, literals) one body may hold.
/// A chat of 2,000 messages with tools is about 15,000.
pub const MAX_VALUES: usize = 50_000;

/// The number of values in `body`, if it is JSON (an approximation for text that is not:
/// the parser then refuses it). Counts every container and every element of one: `[` and
/// `{` open one value, each `,` and `:` outside strings starts another.
pub fn count_values(body: &[u8]) -> usize {
    let mut count = 0_usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut empty = true;
    for &byte in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' | b',' => count += 1,
            _ => {}
        }
        if !byte.is_ascii_whitespace() {
            empty = false;
        }
    }
    // The outermost value, when it is a scalar.
    count + usize::from(!empty)
}

/// Refuse a body of more than [`MAX_VALUES`] values.
///
/// # Errors
/// 413 `request_too_complex`.
pub fn check(body: &[u8]) -> Result<(), ApiError> {
    let values = count_values(body);
    if values > MAX_VALUES {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            code: "request_too_complex".into(),
            message: format!(
                "the body holds about {values} JSON values; at most {MAX_VALUES} are accepted"
            ),
            retry_after: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_counted_outside_strings_only() {
        assert_eq!(count_values(b""), 0);
        assert_eq!(count_values(b"5"), 1);
        assert_eq!(count_values(br#"{"a": [1, 2, 3]}"#), 5);
        // Brackets, commas and escaped quotes inside strings are text.
        assert_eq!(count_values(br#"{"a": "[,{\"]}", "b": 1}"#), 3);
    }

    #[test]
    fn thirty_thousand_tiny_messages_are_too_many_and_a_long_chat_is_not() {
        let tiny = format!(
            r#"{{"model":"m","messages":[{}]}}"#,
            vec![r#"{"role":"user","content":"x"}"#; 30_000].join(",")
        );
        let refused = check(tiny.as_bytes()).unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.code.as_ref()),
            (413, "request_too_complex")
        );
        let long = format!(
            r#"{{"model":"m","messages":[{}]}}"#,
            vec![format!(r#"{{"role":"user","content":"{}"}}"#, "word ".repeat(100)); 2_000]
                .join(",")
        );
        assert!(check(long.as_bytes()).is_ok());
    }
}
