//! `streams apply` and `streams apply --check`.
//!
//! Apply makes the server match the files: it creates what is missing and updates what
//! drifted, and a second run changes nothing and says so. It never deletes a stream or a
//! consumer, and it refuses changes that would lose data or need a delete and recreate —
//! removing a subject, shrinking a limit, changing storage or retention, changing a consumer's
//! delivery or ack policy — naming each one, so an operator decides.
//!
//! Check compares without changing anything and reports each drift: a missing stream or
//! consumer, or each key whose value on the server differs from the file.

use std::fmt;

use async_nats::jetstream;
use serde_json::{Map, Value};

use crate::definitions::{ConsumerDef, StreamDef, StreamSet, server_view};
use crate::{Bus, BusError};

/// One key whose server value differs from its file value.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// The setting.
    pub key: String,
    /// Its value in the definition file.
    pub file: Value,
    /// Its value on the server.
    pub server: Value,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: file {} != server {}",
            self.key, self.file, self.server
        )
    }
}

/// What apply did (or check found) for one definition.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Already as the file says.
    Unchanged,
    /// Did not exist (check: would be created).
    Created,
    /// Drifted and was brought in line (check: would be updated).
    Updated(Vec<Drift>),
    /// Drifted in a way apply will not fix; the reasons name each key.
    Refused(Vec<String>),
}

/// The outcome for one stream or consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `stream MESSAGES` or `consumer MESSAGES/projector_messages`.
    pub what: String,
    /// What was (or would be) done.
    pub change: Change,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.change {
            Change::Unchanged => write!(f, "{}: unchanged", self.what),
            Change::Created => write!(f, "{}: created", self.what),
            Change::Updated(drift) => {
                write!(f, "{}: updated", self.what)?;
                for d in drift {
                    write!(f, "\n    {d}")?;
                }
                Ok(())
            }
            Change::Refused(reasons) => {
                write!(f, "{}: REFUSED", self.what)?;
                for r in reasons {
                    write!(f, "\n    {r}")?;
                }
                Ok(())
            }
        }
    }
}

/// The outcomes of an apply or a check, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyReport {
    /// One per stream and consumer.
    pub outcomes: Vec<Outcome>,
}

impl ApplyReport {
    /// Whether anything was (or, for a check, would be) created or updated.
    pub fn changed(&self) -> bool {
        self.outcomes
            .iter()
            .any(|o| matches!(o.change, Change::Created | Change::Updated(_)))
    }

    /// Whether some change was refused.
    pub fn refused(&self) -> bool {
        self.outcomes
            .iter()
            .any(|o| matches!(o.change, Change::Refused(_)))
    }

    /// Whether the server matches the files exactly.
    pub fn in_sync(&self) -> bool {
        self.outcomes
            .iter()
            .all(|o| matches!(o.change, Change::Unchanged))
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for o in &self.outcomes {
            writeln!(f, "{o}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Apply,
    Check,
}

impl Bus {
    /// Creates and updates streams and consumers to match `set`. Never deletes.
    pub async fn apply(&self, set: &StreamSet) -> Result<ApplyReport, BusError> {
        self.reconcile(set, Mode::Apply).await
    }

    /// Compares the server with `set` without changing anything.
    pub async fn check(&self, set: &StreamSet) -> Result<ApplyReport, BusError> {
        self.reconcile(set, Mode::Check).await
    }

    async fn reconcile(&self, set: &StreamSet, mode: Mode) -> Result<ApplyReport, BusError> {
        let mut report = ApplyReport::default();
        for def in &set.streams {
            let change = self.reconcile_stream(def, mode).await?;
            report.outcomes.push(Outcome {
                what: format!("stream {}", def.config.name),
                change,
            });
        }
        for def in &set.consumers {
            let change = self.reconcile_consumer(def, mode).await?;
            report.outcomes.push(Outcome {
                what: format!("consumer {}/{}", def.stream, def.name),
                change,
            });
        }
        Ok(report)
    }

    async fn reconcile_stream(&self, def: &StreamDef, mode: Mode) -> Result<Change, BusError> {
        let js = self.jetstream();
        let name = &def.config.name;
        let info = match js.get_stream(name).await {
            Ok(stream) => stream
                .get_info()
                .await
                .map_err(|e| BusError::jetstream(name, e))?,
            Err(err) if crate::is_not_found(&err) => {
                if mode == Mode::Apply {
                    js.create_stream(def.config.clone())
                        .await
                        .map_err(|e| BusError::jetstream(name, e))?;
                    tracing::info!(stream = %name, "created stream");
                }
                return Ok(Change::Created);
            }
            Err(err) => return Err(BusError::jetstream(name, err)),
        };
        let drift = diff(&def.keys, &server_view(&info.config, &def.keys));
        if drift.is_empty() {
            return Ok(Change::Unchanged);
        }
        let refused: Vec<String> = drift.iter().filter_map(destructive_stream_change).collect();
        if !refused.is_empty() {
            return Ok(Change::Refused(refused));
        }
        if mode == Mode::Apply {
            js.update_stream(def.config.clone())
                .await
                .map_err(|e| BusError::jetstream(name, e))?;
            tracing::info!(stream = %name, "updated stream");
        }
        Ok(Change::Updated(drift))
    }

    async fn reconcile_consumer(&self, def: &ConsumerDef, mode: Mode) -> Result<Change, BusError> {
        let js = self.jetstream();
        let what = format!("{}/{}", def.stream, def.name);
        let stream = js
            .get_stream_no_info(&def.stream)
            .await
            .map_err(|err| BusError::jetstream(&what, err))?;
        let info = match stream.consumer_info(&def.name).await {
            Ok(info) => info,
            // Check mode with a stream still to be created: its consumers are too.
            Err(err) if mode == Mode::Check && stream_not_found(&err) => {
                return Ok(Change::Created);
            }
            Err(err) if consumer_not_found(&err) => {
                if mode == Mode::Apply {
                    stream
                        .create_consumer(def.config.clone())
                        .await
                        .map_err(|e| BusError::jetstream(&what, e))?;
                    tracing::info!(consumer = %what, "created consumer");
                }
                return Ok(Change::Created);
            }
            Err(err) => return Err(BusError::jetstream(&what, err)),
        };
        let drift = diff(&def.keys, &server_view(&info.config, &def.keys));
        if drift.is_empty() {
            return Ok(Change::Unchanged);
        }
        let refused: Vec<String> = drift
            .iter()
            .filter_map(|d| fixed_consumer_key(&def.name, d))
            .collect();
        if !refused.is_empty() {
            return Ok(Change::Refused(refused));
        }
        if mode == Mode::Apply {
            stream
                .update_consumer(def.config.clone())
                .await
                .map_err(|e| BusError::jetstream(&what, e))?;
            tracing::info!(consumer = %what, "updated consumer");
        }
        Ok(Change::Updated(drift))
    }
}

fn consumer_not_found(err: &jetstream::context::ConsumerInfoError) -> bool {
    match err.kind() {
        jetstream::context::ConsumerInfoErrorKind::NotFound => true,
        jetstream::context::ConsumerInfoErrorKind::JetStream(e) => {
            e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
        }
        _ => false,
    }
}

fn stream_not_found(err: &jetstream::context::ConsumerInfoError) -> bool {
    match err.kind() {
        jetstream::context::ConsumerInfoErrorKind::StreamNotFound => true,
        jetstream::context::ConsumerInfoErrorKind::JetStream(e) => {
            e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
        }
        _ => false,
    }
}

/// Keys whose file and server values differ.
fn diff(file: &Map<String, Value>, server: &Map<String, Value>) -> Vec<Drift> {
    file.iter()
        .filter_map(|(key, file_value)| {
            let server_value = server.get(key).cloned().unwrap_or(Value::Null);
            (!same(file_value, &server_value)).then(|| Drift {
                key: key.clone(),
                file: file_value.clone(),
                server: server_value,
            })
        })
        .collect()
}

/// Equality where a missing value and an empty one mean the same.
fn same(a: &Value, b: &Value) -> bool {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    a == b || (empty(a) && empty(b))
}

/// A limit as a number where "unlimited" (`0` or `-1`) is infinity.
fn limit(v: &Value) -> f64 {
    match v.as_f64() {
        Some(n) if n > 0.0 => n,
        _ => f64::INFINITY,
    }
}

/// Why a stream drift must not be applied automatically, if it must not.
fn destructive_stream_change(d: &Drift) -> Option<String> {
    match d.key.as_str() {
        "storage" | "retention" => Some(format!(
            "{}: changing {} to {} needs the stream deleted and recreated, which loses its \
             messages and its epoch; apply never does that",
            d.key, d.server, d.file
        )),
        "subjects" => {
            let file: Vec<&str> = strings(&d.file);
            let removed: Vec<&str> = strings(&d.server)
                .into_iter()
                .filter(|s| !file.contains(s))
                .collect();
            (!removed.is_empty()).then(|| {
                format!(
                    "subjects: removing {removed:?} orphans the messages stored on them; \
                     add the new subjects alongside instead"
                )
            })
        }
        "max_age" | "max_bytes" | "max_msgs" | "max_msgs_per_subject" => {
            (limit(&d.file) < limit(&d.server)).then(|| {
                format!(
                    "{}: lowering the limit from {} to {} discards stored messages",
                    d.key, d.server, d.file
                )
            })
        }
        "name" => Some("name: a stream cannot be renamed".to_owned()),
        _ => None,
    }
}

/// Consumer keys the server cannot change in place.
fn fixed_consumer_key(name: &str, d: &Drift) -> Option<String> {
    const FIXED: &[&str] = &[
        "durable_name",
        "name",
        "deliver_policy",
        "opt_start_seq",
        "opt_start_time",
        "ack_policy",
        "replay_policy",
        "deliver_subject",
        "mem_storage",
    ];
    FIXED.contains(&d.key.as_str()).then(|| {
        format!(
            "{}: changing {} to {} needs consumer {name} deleted and recreated, which loses \
             its position; apply never does that",
            d.key, d.server, d.file
        )
    })
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn drift(key: &str, file: Value, server: Value) -> Drift {
        Drift {
            key: key.into(),
            file,
            server,
        }
    }

    #[test]
    fn diff_names_each_differing_key() {
        let file = json!({"a": 1, "b": [], "c": "x"});
        let server = json!({"a": 2, "c": "x", "d": 9});
        let d = diff(file.as_object().unwrap(), server.as_object().unwrap());
        assert_eq!(d, vec![drift("a", json!(1), json!(2))]);
    }

    #[test]
    fn growing_is_safe_shrinking_is_refused() {
        assert!(destructive_stream_change(&drift("max_age", json!(0), json!(100))).is_none());
        assert!(destructive_stream_change(&drift("max_msgs", json!(200), json!(100))).is_none());
        let r = destructive_stream_change(&drift("max_msgs", json!(100), json!(-1))).unwrap();
        assert!(r.starts_with("max_msgs: lowering the limit"), "{r}");
        assert!(
            destructive_stream_change(&drift("storage", json!("memory"), json!("file"))).is_some()
        );
        assert!(
            destructive_stream_change(&drift("duplicate_window", json!(1), json!(2))).is_none()
        );
    }

    #[test]
    fn adding_subjects_is_safe_removing_is_refused() {
        let add = drift("subjects", json!(["a.>", "b.>"]), json!(["a.>"]));
        assert!(destructive_stream_change(&add).is_none());
        let remove = drift("subjects", json!(["b.>"]), json!(["a.>"]));
        let r = destructive_stream_change(&remove).unwrap();
        assert!(r.contains("[\"a.>\"]"), "{r}");
    }

    #[test]
    fn consumer_policies_are_fixed() {
        assert!(
            fixed_consumer_key("p", &drift("ack_policy", json!("all"), json!("explicit")))
                .is_some()
        );
        assert!(fixed_consumer_key("p", &drift("max_ack_pending", json!(10), json!(5))).is_none());
    }
}
