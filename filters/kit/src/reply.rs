//! Local replies: every reply a filter sends itself carries a small JSON body
//! `{"message": ..., "request_id": ...}` (docs/architecture.md, "Contracts between filters").

use serde::Serialize;

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

/// The JSON body of a local reply. Serialization of two strings cannot fail; the
/// fallback only keeps this function total.
pub fn json_body(message: &str, request_id: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&Body {
        message,
        request_id,
    })
    .unwrap_or_else(|_| br#"{"message":"error"}"#.to_vec())
}

pub const CONTENT_TYPE_JSON: (&str, &str) = ("content-type", "application/json");

#[cfg(test)]
mod tests {
    #[test]
    fn body_escapes_and_carries_the_request_id() {
        let body = super::json_body("bad \"token\"", Some("abc"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["message"], "bad \"token\"");
        assert_eq!(v["request_id"], "abc");
    }
}
