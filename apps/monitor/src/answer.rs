use serde_json::{json, Value};

use crate::legacy::*;
use crate::model::*;

/// One HTTP answer: status, content type, body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// An error answer: status and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 404,
            message: message.into(),
        }
    }
}

pub(crate) const JSON: &str = "application/json";
pub(crate) const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A reason code as JSON: a one-letter string, or null for none.
pub(crate) fn reason_json(reason: u8) -> Value {
    if reason == 0 {
        Value::Null
    } else {
        Value::String(char::from(reason).to_string())
    }
}

/// `body` (an object) with seq, lag and stale added, as a reply.
pub(crate) fn json_reply(status: u16, mut body: Value, fresh: Freshness) -> Reply {
    if let Value::Object(map) = &mut body {
        map.insert("seq".into(), fresh.seq.into());
        map.insert("lag".into(), fresh.lag.into());
        map.insert("stale".into(), fresh.stale.into());
    }
    Reply {
        status,
        content_type: JSON,
        body: body.to_string(),
    }
}

pub(crate) fn error_reply(error: ApiError, fresh: Freshness) -> Reply {
    json_reply(error.status, json!({ "error": error.message }), fresh)
}

pub(crate) fn no_query(query: &str) -> Result<(), ApiError> {
    parse_query(query, &[]).map(|_| ())
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, in query
/// strings); the result must be UTF-8.
pub(crate) fn percent_decode(text: &str, plus_is_space: bool) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("bad percent-encoding in {text:?}"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request(format!("{text:?} is not UTF-8")))
}

/// The `name=value` pairs of a query string, each name among `allowed` and
/// given once.
pub(crate) fn parse_query(
    query: &str,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let mut params: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name, true)?;
        let value = percent_decode(value, true)?;
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::bad_request(if allowed.is_empty() {
                format!("unknown parameter {name:?}: this route takes none")
            } else {
                format!(
                    "unknown parameter {name:?} (this route takes {})",
                    allowed.join(", ")
                )
            }));
        }
        if params.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::bad_request(format!(
                "parameter {name:?} given twice"
            )));
        }
        params.push((name, value));
    }
    Ok(params)
}

pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The `limit` of a listing page: [`PAGE_LIMIT_DEFAULT`] when absent,
/// capped at [`PAGE_LIMIT_MAX`], at least 1.
pub(crate) fn page_limit(params: &[(String, String)]) -> Result<usize, ApiError> {
    match param(params, "limit") {
        None => Ok(PAGE_LIMIT_DEFAULT),
        Some(text) => match parse_number::<u64>(text, "limit")? {
            0 => Err(ApiError::bad_request(format!(
                "limit must be 1 or more (at most {PAGE_LIMIT_MAX} are listed per page)"
            ))),
            n => Ok(n.min(PAGE_LIMIT_MAX as u64) as usize),
        },
    }
}

/// A whole number made of ASCII digits only (no sign, no spaces).
pub(crate) fn parse_number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, ApiError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(format!(
            "{what} must be a whole number, not {text:?}"
        )));
    }
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("{what} {text} is out of range")))
}
