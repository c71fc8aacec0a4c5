//! Reading a spec: the text formats (TOML, YAML, JSON), [`parse_spec`], [`parse_node_pool`] and [`SpecError`].

use super::*;

/// What went wrong reading or checking a spec. Every message starts with what to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The text is not valid TOML/YAML/JSON for a spec: bad syntax, an unknown field, a
    /// wrong type or a missing required field. The message is the parser's, with location.
    #[error("{format} spec does not parse: {message}")]
    Parse {
        /// The format the text was read as.
        format: SpecFormat,
        /// The parser's message (names the field and the line where it can).
        message: String,
    },
    /// A field holds a value outside what stator accepts.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field, e.g. `replicas` or `app.process.command`.
        field: String,
        /// What was wrong and what to write instead.
        reason: String,
    },
}

impl SpecError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SpecError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Text format of a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecFormat {
    /// TOML, the format of the examples.
    Toml,
    /// YAML.
    Yaml,
    /// JSON (what the API stores and returns).
    Json,
    /// Guess: JSON when it starts with `{`, TOML when a line looks like `key = value`,
    /// YAML otherwise.
    Auto,
}

impl fmt::Display for SpecFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpecFormat::Toml => "TOML",
            SpecFormat::Yaml => "YAML",
            SpecFormat::Json => "JSON",
            SpecFormat::Auto => "auto-detected",
        })
    }
}

impl SpecFormat {
    /// The format a file name's extension implies (`.toml`, `.yaml`/`.yml`, `.json`),
    /// [`SpecFormat::Auto`] for anything else.
    pub fn from_path(path: &str) -> SpecFormat {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".toml") {
            SpecFormat::Toml
        } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            SpecFormat::Yaml
        } else if lower.ends_with(".json") {
            SpecFormat::Json
        } else {
            SpecFormat::Auto
        }
    }

    /// Resolves [`SpecFormat::Auto`] by looking at the text.
    pub fn detect(self, text: &str) -> SpecFormat {
        if self != SpecFormat::Auto {
            return self;
        }
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            return SpecFormat::Json;
        }
        let looks_like_toml = text.lines().any(|line| {
            let line = line.trim();
            line.starts_with('[')
                || line
                    .split_once('=')
                    .is_some_and(|(key, _)| !key.trim().is_empty() && !key.contains(':'))
        });
        if looks_like_toml {
            SpecFormat::Toml
        } else {
            SpecFormat::Yaml
        }
    }
}

/// Reads a service spec from `text`. Unknown fields, wrong types and missing required
/// fields are errors; values are not checked here (call [`ServiceSpec::validate`]).
pub fn parse_spec(text: &str, format: SpecFormat) -> Result<ServiceSpec, SpecError> {
    parse_document(text, format)
}

/// Reads a node-pool spec from `text`, like [`parse_spec`].
pub fn parse_node_pool(text: &str, format: SpecFormat) -> Result<NodePoolSpec, SpecError> {
    parse_document(text, format)
}

pub(super) fn parse_document<T: for<'de> Deserialize<'de>>(
    text: &str,
    format: SpecFormat,
) -> Result<T, SpecError> {
    let format = format.detect(text);
    let parsed = match format {
        SpecFormat::Toml => toml::from_str(text).map_err(|e| one_line_toml_error(text, &e)),
        SpecFormat::Yaml => serde_yaml_ng::from_str(text).map_err(|e| e.to_string()),
        SpecFormat::Json | SpecFormat::Auto => {
            serde_json::from_str(text).map_err(|e| e.to_string())
        }
    };
    parsed.map_err(|message| SpecError::Parse {
        format,
        // One line even when the parser quotes a key or value that holds a line break.
        message: message.trim().replace('\r', "\\r").replace('\n', "\\n"),
    })
}

/// The toml crate renders an error as a source excerpt over several lines; errors are
/// one line (the CLI prints them as its one-line reason), so keep the location, the
/// offending line (which names the field) and the message.
pub(super) fn one_line_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', " ");
    let Some(span) = error.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    format!(
        "line {line}, column {column} (`{}`): {message}",
        text[line_start..line_end].trim()
    )
}
