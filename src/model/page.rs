//! Page cursors and page sizes, for every list: keyset cursors (the last
//! item's creation time and id) for lists that grow at their end, offset
//! cursors for the rest. Both are opaque to callers (URL-safe base64).

use base64::Engine as _;

use crate::config::LimitsConfig;
use crate::error::{Error, Result};

const CURSOR_PREFIX: &str = "s1:";

/// The keyset cursor after `(created_at, id)`.
pub fn encode_cursor(created_at: i64, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{CURSOR_PREFIX}{created_at}:{id}"))
}

/// The `(created_at, id)` a keyset cursor names.
pub fn decode_cursor(c: &str) -> Result<(i64, String)> {
    let bad = || {
        Error::invalid(
            format!(
                "cursor '{}' is not a cursor this tool returned",
                crate::error::excerpt(c)
            ),
            "Pass next_cursor from the previous page unchanged, or omit cursor to start at the first page.",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let rest = s.strip_prefix(CURSOR_PREFIX).ok_or_else(bad)?;
    let (ts, id) = rest.split_once(':').ok_or_else(bad)?;
    Ok((ts.parse().map_err(|_| bad())?, id.to_string()))
}

/// Trim a page fetched with `limit + 1` rows to `limit`; the cursor of its last
/// row when there was more.
pub fn next_cursor<T>(
    rows: &mut Vec<T>,
    limit: u32,
    key: impl Fn(&T) -> (i64, &str),
) -> Option<String> {
    if rows.len() <= limit as usize {
        return None;
    }
    rows.truncate(limit as usize);
    rows.last().map(|r| {
        let (created_at, id) = key(r);
        encode_cursor(created_at, id)
    })
}

/// The cursor of an offset-paged list.
pub fn encode_offset(n: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("o1:{n}"))
}

/// The offset an offset cursor names.
pub fn decode_offset(c: &str) -> Result<usize> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("o1:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| {
            Error::invalid(
                format!(
                    "cursor '{}' is not a cursor this tool returned",
                    crate::error::excerpt(c)
                ),
                "Pass next_cursor unchanged, or omit cursor.",
            )
        })
}

/// An optional argument: `default` when absent, otherwise within 1..=max.
pub fn bounded(
    field: &str,
    value: Option<u64>,
    default: u64,
    max: u64,
    hint: impl Into<String>,
) -> Result<u64> {
    match value {
        None => Ok(default),
        Some(n) if n == 0 || n > max => Err(Error::invalid(
            format!("{field} {n} is outside 1..={max}"),
            hint,
        )),
        Some(n) => Ok(n),
    }
}

/// The page size of a list call: the default, or the caller's within 1..=max.
pub fn page_limit(l: &LimitsConfig, limit: Option<u32>) -> Result<u32> {
    let max = l.max_page_size;
    bounded(
        "limit",
        limit.map(u64::from),
        l.default_page_size.into(),
        max.into(),
        format!("Use a limit between 1 and {max} and follow next_cursor."),
    )
    .map(|n| n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = encode_cursor(1234, "ses_abc");
        assert_eq!(decode_cursor(&c).unwrap(), (1234, "ses_abc".to_string()));
        assert_eq!(
            decode_cursor("nope").unwrap_err().code,
            crate::error::ErrorCode::InvalidParameters
        );
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("x1:1:a");
        assert!(decode_cursor(&forged).is_err());
        assert_eq!(decode_offset(&encode_offset(40)).unwrap(), 40);
        assert!(decode_offset("o2:1").is_err());
    }
}
