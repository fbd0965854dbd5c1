//! Merging the config layers and attributing every error to a key and its source.

use std::collections::HashMap;
use std::path::PathBuf;

use toml::{Table, Value};

use super::{Config, ConfigError};

/// Environment variables that start with this prefix are config keys.
pub const ENV_PREFIX: &str = "SHARDMQ_";
/// Names the config file; not itself a key.
pub const ENV_CONFIG_FILE: &str = "SHARDMQ_CONFIG";

/// Keys whose string form is a comma-separated list of integers.
const INTEGER_LIST_KEYS: &[&str] = &["cpus"];

/// Everything the loader reads, gathered by the caller so tests can pass their own.
#[derive(Debug, Default, Clone)]
pub struct ConfigSources {
    /// The TOML file, if one was named.
    pub file: Option<PathBuf>,
    /// `SHARDMQ_*` variables (others are ignored), in any order.
    pub env: Vec<(String, String)>,
    /// `(key, value, flag name)` from the command line, in order; later ones win.
    pub flags: Vec<(String, String, String)>,
}

/// Builds the effective config: defaults < file < environment < flags.
/// The result is merged and type-checked; call [`Config::validate`] next.
pub fn load(sources: &ConfigSources) -> Result<Config, ConfigError> {
    let defaults = Table::try_from(Config::default()).expect("defaults serialize to a table");
    let mut merged = defaults.clone();
    let mut origin: HashMap<String, String> = HashMap::new();

    if let Some(path) = &sources.file {
        let label = format!("config file {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: "config".into(),
            source: Some(label.clone()),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        let table: Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            key: key_at_span(&text, e.span()).unwrap_or_else(|| "config".into()),
            source: Some(label.clone()),
            reason: e.message().to_string(),
        })?;
        for (key, value) in table {
            origin.insert(key.clone(), label.clone());
            merged.insert(key, value);
        }
    }

    let mut env: Vec<_> = sources
        .env
        .iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && name != ENV_CONFIG_FILE)
        .collect();
    env.sort();
    for (name, raw) in env {
        let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        let value = string_to_value(&key, raw, defaults.get(&key));
        origin.insert(key.clone(), name.clone());
        merged.insert(key, value);
    }

    for (key, raw, flag) in &sources.flags {
        let value = string_to_value(key, raw, defaults.get(key));
        origin.insert(key.clone(), flag.clone());
        merged.insert(key.clone(), value);
    }

    deserialize(&merged, &origin)
}

/// Deserializes the merged table from its TOML text, so that a type error carries a span
/// we can map back to the key, and the key to the layer that set it.
fn deserialize(merged: &Table, origin: &HashMap<String, String>) -> Result<Config, ConfigError> {
    let text = toml::to_string(merged).map_err(|e| ConfigError::new("config", e.to_string()))?;
    toml::from_str::<Config>(&text).map_err(|e| {
        let message = e.message().to_string();
        let key = unknown_field(&message)
            .or_else(|| key_at_span(&text, e.span()))
            .unwrap_or_else(|| "config".into());
        let top = key.split('.').next().unwrap_or(&key).to_string();
        let reason = if unknown_field(&message).is_some() {
            "unknown key".to_string()
        } else {
            message
        };
        ConfigError {
            source: origin.get(&top).cloned(),
            key,
            reason,
        }
    })
}

/// Interprets a string from the environment or a flag as the type the key has by default.
fn string_to_value(key: &str, raw: &str, default: Option<&Value>) -> Value {
    let trimmed = raw.trim();
    match default {
        Some(Value::Integer(_)) => trimmed
            .replace('_', "")
            .parse::<i64>()
            .map_or_else(|_| Value::String(raw.to_string()), Value::Integer),
        Some(Value::Boolean(_)) => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Boolean(true),
            "false" | "0" | "no" | "off" => Value::Boolean(false),
            _ => Value::String(raw.to_string()),
        },
        Some(Value::Float(_)) => trimmed
            .parse::<f64>()
            .map_or_else(|_| Value::String(raw.to_string()), Value::Float),
        Some(Value::Array(_)) => Value::Array(
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| {
                    if INTEGER_LIST_KEYS.contains(&key) {
                        item.parse::<i64>()
                            .map_or_else(|_| Value::String(item.to_string()), Value::Integer)
                    } else {
                        Value::String(item.to_string())
                    }
                })
                .collect(),
        ),
        _ => Value::String(raw.to_string()),
    }
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// The dotted key whose line contains the byte at `span.start`.
fn key_at_span(text: &str, span: Option<std::ops::Range<usize>>) -> Option<String> {
    let start = span?.start.min(text.len());
    let mut section: Option<String> = None;
    let mut found = None;
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = Some(trimmed.trim_matches(|c| c == '[' || c == ']').to_string());
            found = section.clone();
        } else if let Some((key, _)) = trimmed.split_once('=') {
            let key = key.trim().trim_matches('"');
            found = Some(match &section {
                Some(s) => format!("{s}.{key}"),
                None => key.to_string(),
            });
        }
        if start < line_start + line.len() {
            return found;
        }
        line_start += line.len();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn layers_override_in_order() {
        let f = file("shards = 1\nlog_level = \"warn\"\nmetrics_shard = 0\n");
        let sources = ConfigSources {
            file: Some(f.path().into()),
            env: env(&[("SHARDMQ_SHARDS", "2"), ("SHARDMQ_LOG_LEVEL", "debug")]),
            flags: vec![("shards".into(), "3".into(), "--shards".into())],
        };
        let config = load(&sources).unwrap();
        assert_eq!(config.shards, 3, "flag beats env");
        assert_eq!(config.log_level, "debug", "env beats file");
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let f = file("shards = 1\nshard_count = 2\n");
        let err = load(&ConfigSources {
            file: Some(f.path().into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "shard_count");
        assert!(err.source.unwrap().contains("config file"));
    }

    #[test]
    fn unknown_env_variable_is_named() {
        let err = load(&ConfigSources {
            env: env(&[("SHARDMQ_SHARDZ", "2")]),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "shardz");
        assert_eq!(err.source.as_deref(), Some("SHARDMQ_SHARDZ"));
    }

    #[test]
    fn bad_value_names_key_and_source() {
        let err = load(&ConfigSources {
            env: env(&[("SHARDMQ_SHARDS", "many")]),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "shards");
        assert_eq!(err.source.as_deref(), Some("SHARDMQ_SHARDS"));

        let f = file("mqtt_listen = \"nowhere\"\n");
        let err = load(&ConfigSources {
            file: Some(f.path().into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "mqtt_listen");
    }

    #[test]
    fn lists_from_env() {
        let config = load(&ConfigSources {
            env: env(&[("SHARDMQ_CPUS", "1, 0")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.cpus, vec![1, 0]);
    }

    #[test]
    fn toml_syntax_error_is_reported() {
        let f = file("shards = = 1\n");
        let err = load(&ConfigSources {
            file: Some(f.path().into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "shards");
    }
}
