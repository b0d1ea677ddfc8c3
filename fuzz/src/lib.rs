//! What the fuzz targets share.

use serde_json::Value;

/// Whether a JSON value holds a number that is not an integer.
pub fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}

/// A filter configuration that parsed parses again, to the same thing, when written
/// another way (serde_json's own spelling: no whitespace, escapes normalized): what
/// was accepted depends on the JSON document, not on how it was written.
pub fn reparses_alike<C: std::fmt::Debug, E: std::fmt::Debug>(
    data: &[u8],
    first: &C,
    parse: impl Fn(&[u8]) -> Result<C, E>,
) {
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(again) = serde_json::to_vec(&doc) else {
        return;
    };
    match parse(&again) {
        // serde_json (without `float_roundtrip`) may read a long decimal one unit in
        // the last place off, and its own output of a float need not read back the
        // same: with floats, only acceptance is compared.
        Ok(_) if has_float(&doc) => {}
        Ok(second) => assert_eq!(
            format!("{first:?}"),
            format!("{second:?}"),
            "the same document gave another configuration"
        ),
        Err(e) => panic!("the same document, respelled, is refused: {e:?}"),
    }
}
