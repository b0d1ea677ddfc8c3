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

// serde_json reports the line and column of a type error but not the field path; the
// message it gives ("unknown field `x`, expected one of ...", "invalid type: ...")
// already names the field for the common cases, so we keep it whole.
fn serde_path_to_error<T: DeserializeOwned>(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
) -> Result<T, ConfigError> {
    T::deserialize(de).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ConfigError::Syntax(e.to_string())
        } else {
            ConfigError::Field {
                field: "(document)".into(),
                reason: e.to_string(),
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
