//! The body of every reply Portcullis answers itself, whoever answers: a filter's
//! local reply (through `kit`), the engine's 503 for a failed filter, the gateway's
//! own 4xx and 5xx. One shape, `{"message": ..., "request_id": ...}`, built in one
//! place so a client parses all of them the same way (Kong answers `{"message": ...}`
//! too).

use serde::Serialize;

/// The content type of [`json_body`].
pub const CONTENT_TYPE_JSON: (&str, &str) = ("content-type", "application/json");

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

/// The JSON body of a reply: the message, and the request id when there is one.
pub fn json_body(message: &str, request_id: Option<&str>) -> Vec<u8> {
    // Serializing two strings cannot fail; the fallback only keeps this total.
    serde_json::to_vec(&Body {
        message,
        request_id,
    })
    .unwrap_or_else(|_| br#"{"message":"error"}"#.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_request_id_is_left_out_when_there_is_none() {
        assert_eq!(json_body("no route", None), br#"{"message":"no route"}"#);
    }

    proptest! {
        /// Whatever the message and id hold (quotes, control characters, any
        /// Unicode), the body is one JSON object that gives them back unchanged.
        #[test]
        fn any_message_and_id_round_trip(message in any::<String>(), id in proptest::option::of(any::<String>())) {
            let body = json_body(&message, id.as_deref());
            let v: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
            prop_assert_eq!(v["message"].as_str(), Some(message.as_str()));
            prop_assert_eq!(v.get("request_id").and_then(|v| v.as_str()), id.as_deref());
            prop_assert_eq!(v.as_object().map(|o| o.len()), Some(1 + usize::from(id.is_some())));
        }
    }
}
