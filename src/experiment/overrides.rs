//! `--set key=value`: changes one field of an experiment from the command
//! line without editing its file.
//!
//! The key is a dotted path through the experiment as it is written in RON:
//! `training.epochs=3`, `seed=7`, `training.optimizer.Adam.learning_rate=0.01`
//! (an enum's variant is a path step), `data.Synthetic.samples=500`. In a
//! list a step is an index (`model.inputs.0`) or, for the layers, a layer
//! name: `model.layers.lstm.kind.Lstm.units=128`. The value is JSON when it
//! parses as JSON (`3`, `0.5`, `true`, `[3, 3]`, `null`, `"text"`) and a
//! plain string otherwise (`backend=Cpu`, a unit variant). The changed
//! experiment is checked as a whole, so an unknown field or a wrong type is
//! an error naming the key.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::experiment::run::Experiment;

fn bad(key: &str, why: impl Into<String>) -> Error {
    Error::setting(format!("--set {key}"), why)
}

/// Splits `key=value`.
fn split(arg: &str) -> Result<(&str, &str)> {
    arg.split_once('=')
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| bad(arg, "expected key=value, e.g. training.epochs=3"))
}

/// The step `step` inside `value`, created (as an empty object) when the
/// slot is an object without it or is null.
fn step<'v>(value: &'v mut Value, step: &str, key: &str) -> Result<&'v mut Value> {
    if value.is_null() {
        *value = Value::Object(Default::default());
    }
    match value {
        Value::Object(map) => Ok(map.entry(step.to_string()).or_insert(Value::Null)),
        Value::Array(items) => {
            let at = match step.parse::<usize>() {
                Ok(i) => Some(i),
                Err(_) => items
                    .iter()
                    .position(|it| it.get("name").and_then(Value::as_str) == Some(step)),
            };
            let len = items.len();
            at.and_then(|i| items.get_mut(i)).ok_or_else(|| {
                bad(
                    key,
                    format!("`{step}` is neither an index below {len} nor the name of an item"),
                )
            })
        }
        // A unit enum variant written as a string: the step names another
        // variant, whose fields follow.
        Value::String(_) => {
            *value = Value::Object(Default::default());
            step_into_object(value, step)
        }
        other => Err(bad(
            key,
            format!("`{step}` goes inside {other}, which has no fields"),
        )),
    }
}

fn step_into_object<'v>(value: &'v mut Value, step: &str) -> Result<&'v mut Value> {
    match value {
        Value::Object(map) => Ok(map.entry(step.to_string()).or_insert(Value::Null)),
        _ => unreachable!("just made an object"),
    }
}

/// `exp` with every `key=value` of `sets` applied, in order.
pub fn apply_overrides(exp: &Experiment, sets: &[String]) -> Result<Experiment> {
    if sets.is_empty() {
        return Ok(exp.clone());
    }
    let mut tree = serde_json::to_value(exp).map_err(|e| bad("experiment", e.to_string()))?;
    for arg in sets {
        let (key, raw) = split(arg)?;
        let value =
            serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.into()));
        let mut slot = &mut tree;
        for s in key.split('.') {
            if s.is_empty() {
                return Err(bad(key, "empty step in the key"));
            }
            slot = step(slot, s, key)?;
        }
        *slot = value;
        // Checked after each one, so the error names the key that broke it.
        serde_json::from_value::<Experiment>(tree.clone()).map_err(|e| bad(key, e.to_string()))?;
    }
    let out: Experiment = serde_json::from_value(tree).map_err(|e| bad("--set", e.to_string()))?;
    out.validate()?;
    Ok(out)
}
