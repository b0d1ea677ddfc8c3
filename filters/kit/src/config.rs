//! A filter's configuration is one JSON document, parsed once at `on_configure`.
//! A bad document is refused whole, with a message that names the field.

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration is not valid JSON: {0}")]
    Syntax(String),
    #[error("configuration field `{field}`: {reason}")]
    Field { field: String, reason: String },
}

impl ConfigError {
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Parses a filter configuration. An absent or empty configuration means `{}`, so a
/// filter whose every field has a default can be loaded without one (as in Envoy,
/// where `configuration` is optional).
pub fn parse<T: DeserializeOwned>(bytes: Option<&[u8]>) -> Result<T, ConfigError> {
    let bytes = match bytes {
        Some(b) if !b.iter().all(u8::is_ascii_whitespace) => b,
        _ => b"{}",
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error(&mut de)?;
    de.end().map_err(|e| ConfigError::Syntax(e.to_string()))?;
    Ok(value)
}

/// Deserializes while tracking where it is, so a type error or an unknown field is
/// reported with the path of the field (`providers.ping.issuer`, `tiers.gold.second`,
/// `rules[2].path`), not only serde_json's line and column.
fn serde_path_to_error<T: DeserializeOwned>(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ConfigError::Syntax(inner.to_string())
        } else {
            ConfigError::Field {
                // The root itself (a number where an object belongs) has the path ".".
                field: if path == "." { "(document)".into() } else { path },
                reason: inner.to_string(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        #[serde(default)]
        name: String,
    }

    #[test]
    fn empty_configuration_means_defaults() {
        assert_eq!(
            parse::<Conf>(None).unwrap(),
            Conf {
                name: String::new()
            }
        );
        assert_eq!(
            parse::<Conf>(Some(b"  ")).unwrap(),
            Conf {
                name: String::new()
            }
        );
    }

    #[test]
    fn unknown_field_is_refused_by_name() {
        let err = parse::<Conf>(Some(br#"{"nmae": "x"}"#)).unwrap_err();
        assert!(err.to_string().contains("nmae"), "{err}");
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        providers: std::collections::BTreeMap<String, Provider>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Provider {
        #[serde(default)]
        issuer: String,
        #[serde(default)]
        audiences: Vec<String>,
    }

    #[test]
    fn errors_name_the_path_of_the_field() {
        for (doc, path, says) in [
            (
                r#"{"providers": {"ping": {"introspection": {}}}}"#,
                "providers.ping.introspection",
                "unknown field",
            ),
            (
                r#"{"providers": {"ping": {"issuer": 7}}}"#,
                "providers.ping.issuer",
                "invalid type",
            ),
            (
                r#"{"providers": {"ping": {"audiences": ["a", 2]}}}"#,
                "providers.ping.audiences[1]",
                "invalid type",
            ),
            ("7", "(document)", "invalid type"),
        ] {
            match parse::<Outer>(Some(doc.as_bytes())) {
                Err(ConfigError::Field { field, reason }) => {
                    assert_eq!(field, path, "{doc}");
                    assert!(reason.contains(says), "{doc}: {reason}");
                }
                other => panic!("{doc}: {other:?}"),
            }
        }
    }

    #[test]
    fn broken_json_is_a_syntax_error() {
        assert!(matches!(
            parse::<Conf>(Some(b"{")),
            Err(ConfigError::Syntax(_))
        ));
        assert!(matches!(
            parse::<Conf>(Some(b"{} x")),
            Err(ConfigError::Syntax(_))
        ));
    }
}
