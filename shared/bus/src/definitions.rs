//! Stream and consumer definitions as code.
//!
//! `streams/streams/<NAME>.json` holds one stream and `streams/consumers/<STREAM>/<NAME>.json`
//! one durable consumer of that stream, each in the JSON format of
//! `nats stream add --config` / `nats consumer add --config`. The files are parsed with the
//! same serde types async-nats uses, so anything the `nats` CLI accepts we accept too, and a
//! typo in a field value fails here with the file name.
//!
//! The raw JSON object is kept alongside the parsed config: the keys a file names are the keys
//! drift is checked on (see [`crate::apply`]).

use std::path::{Path, PathBuf};

use async_nats::jetstream::{consumer, stream};
use serde_json::{Map, Value};

/// One stream file.
#[derive(Debug, Clone)]
pub struct StreamDef {
    /// The file it comes from.
    pub file: PathBuf,
    /// The stream's configuration.
    pub config: stream::Config,
    /// The file's keys, normalized through the config type (see [`normalize`]).
    pub(crate) keys: Map<String, Value>,
}

/// One consumer file.
#[derive(Debug, Clone)]
pub struct ConsumerDef {
    /// The file it comes from.
    pub file: PathBuf,
    /// The stream it reads.
    pub stream: String,
    /// Its durable name.
    pub name: String,
    /// The consumer's configuration.
    pub config: consumer::Config,
    pub(crate) keys: Map<String, Value>,
}

/// All definitions under one folder.
#[derive(Debug, Clone, Default)]
pub struct StreamSet {
    /// The streams, in file order.
    pub streams: Vec<StreamDef>,
    /// The durable consumers, in file order.
    pub consumers: Vec<ConsumerDef>,
}

#[derive(Debug, thiserror::Error)]
/// Why the stream definitions cannot be loaded.
#[allow(missing_docs)] // each variant's message says what it is
pub enum DefinitionError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid definition: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: consumer of stream {stream}, which no stream file defines")]
    UnknownStream { path: PathBuf, stream: String },
    #[error("no stream definitions in {0}")]
    Empty(PathBuf),
}

impl StreamSet {
    /// Loads every definition under `dir`, setting `num_replicas` of every stream to `replicas`
    /// (one definition serves a single server and a cluster).
    pub fn load(dir: &Path, replicas: usize) -> Result<StreamSet, DefinitionError> {
        let mut set = StreamSet::default();
        for path in json_files(&dir.join("streams"))? {
            let mut raw = read_object(&path)?;
            raw.insert("num_replicas".into(), Value::from(replicas));
            let config: stream::Config = parse(&path, &raw)?;
            if config.name.is_empty() {
                return Err(invalid(&path, "\"name\" is missing"));
            }
            let keys = normalize(&path, &raw, &config)?;
            set.streams.push(StreamDef {
                file: path,
                config,
                keys,
            });
        }
        if set.streams.is_empty() {
            return Err(DefinitionError::Empty(dir.join("streams")));
        }
        let consumers_dir = dir.join("consumers");
        let mut stream_dirs = read_dir_sorted(&consumers_dir)?;
        stream_dirs.retain(|p| p.is_dir());
        for stream_dir in stream_dirs {
            let stream = stream_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for path in json_files(&stream_dir)? {
                if !set.streams.iter().any(|s| s.config.name == stream) {
                    return Err(DefinitionError::UnknownStream { path, stream });
                }
                let raw = read_object(&path)?;
                let config: consumer::Config = parse(&path, &raw)?;
                let Some(name) = config.durable_name.clone().or_else(|| config.name.clone()) else {
                    return Err(invalid(&path, "\"durable_name\" is missing"));
                };
                let keys = normalize(&path, &raw, &config)?;
                set.consumers.push(ConsumerDef {
                    file: path,
                    stream: stream.clone(),
                    name,
                    config,
                    keys,
                });
            }
        }
        Ok(set)
    }

    /// The definition of stream `name`.
    pub fn stream(&self, name: &str) -> Option<&StreamDef> {
        self.streams.iter().find(|s| s.config.name == name)
    }

    /// The definition of consumer `name` of `stream`.
    pub fn consumer(&self, stream: &str, name: &str) -> Option<&ConsumerDef> {
        self.consumers
            .iter()
            .find(|c| c.stream == stream && c.name == name)
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> DefinitionError {
    DefinitionError::Invalid {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DefinitionError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let read = |source| DefinitionError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut paths = std::fs::read_dir(dir)
        .map_err(read)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    paths.sort();
    Ok(paths)
}

fn json_files(dir: &Path) -> Result<Vec<PathBuf>, DefinitionError> {
    let mut paths = read_dir_sorted(dir)?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
    Ok(paths)
}

fn read_object(path: &Path) -> Result<Map<String, Value>, DefinitionError> {
    let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
        path: path.to_owned(),
        source,
    })?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid(path, "expected a JSON object")),
        Err(e) => Err(invalid(path, e.to_string())),
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    raw: &Map<String, Value>,
) -> Result<T, DefinitionError> {
    serde_json::from_value(Value::Object(raw.clone())).map_err(|e| invalid(path, e.to_string()))
}

/// The file's keys with their values as the config type serializes them, so a file value and
/// a server value are compared in the same representation (`"max_age": 0` and a missing
/// `max_age` are the same thing, for instance).
fn normalize<T: serde::Serialize>(
    path: &Path,
    raw: &Map<String, Value>,
    config: &T,
) -> Result<Map<String, Value>, DefinitionError> {
    let Value::Object(full) =
        serde_json::to_value(config).map_err(|e| invalid(path, e.to_string()))?
    else {
        return Err(invalid(path, "expected a JSON object"));
    };
    Ok(raw
        .keys()
        .map(|k| (k.clone(), full.get(k).cloned().unwrap_or(Value::Null)))
        .collect())
}

/// A server-side config in the same representation, restricted to `keys`.
pub(crate) fn server_view<T: serde::Serialize>(
    config: &T,
    keys: &Map<String, Value>,
) -> Map<String, Value> {
    let full = match serde_json::to_value(config) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    keys.keys()
        .map(|k| {
            let mut v = full.get(k).cloned().unwrap_or(Value::Null);
            if k == "metadata"
                && let Value::Object(m) = &mut v
            {
                // The server adds its own `_nats.*` entries; they are not ours to check.
                m.retain(|key, _| !key.starts_with("_nats."));
            }
            (k.clone(), v)
        })
        .collect()
}
