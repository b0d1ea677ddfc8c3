//! Local replies: every reply a filter sends itself carries the product's JSON body
//! `{"message": ..., "request_id": ...}`, built by `portcullis-reply` (the engine and
//! the gateway build theirs there too).

pub use portcullis_reply::{CONTENT_TYPE_JSON, json_body};
