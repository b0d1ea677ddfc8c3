//! What the fuzz targets share.

use serde_json::Value;

/// The same JSON document written another way (serde_json's own spelling: no
/// whitespace, keys in the order read, escapes normalized), or `None` when `data`
/// is not JSON. A configuration is a JSON value: any spelling of it must give the
/// same configuration.
pub fn respelled(data: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(data).ok()?;
    serde_json::to_vec(&v).ok()
}

/// A filter configuration that parsed parses again, to the same thing, when written
/// another way: what was accepted depends on the document, not on its spelling.
pub fn reparses_alike<C: std::fmt::Debug, E: std::fmt::Debug>(
    data: &[u8],
    first: &C,
    parse: impl Fn(&[u8]) -> Result<C, E>,
) {
    if let Some(again) = respelled(data) {
        match parse(&again) {
            Ok(second) => assert_eq!(
                format!("{first:?}"),
                format!("{second:?}"),
                "the same document gave another configuration"
            ),
            Err(e) => panic!("the same document, respelled, is refused: {e:?}"),
        }
    }
}
