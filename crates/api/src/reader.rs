//! Typed access to a request body's fields, each mistake naming its field: below
//! `params`, `structured` and `tools`, which all read bodies through it.

use crate::errors::ApiError;
use serde_json::{Map, Value};

/// Typed access to a JSON object's fields; `null` counts as absent.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// The body must be a JSON object.
    pub fn new(v: &'a Value) -> Result<Self, ApiError> {
        v.as_object()
            .map(|obj| Self { obj })
            .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))
    }

    /// The whole object.
    pub fn object(&self) -> &'a Map<String, Value> {
        self.obj
    }

    /// A field's raw value (absent or null: `None`).
    pub fn value(&self, k: &str) -> Option<&'a Value> {
        self.obj.get(k).filter(|v| !v.is_null())
    }

    /// A number.
    pub fn f64(&self, k: &str) -> Result<Option<f64>, ApiError> {
        match self.value(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| ApiError::bad(k, format!("{k} must be a number, got {}", kind(v)))),
        }
    }

    /// An integer (a float with a fraction or a string is an error).
    pub fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.value(k) {
            None => Ok(None),
            Some(v) => {
                if let Some(i) = v.as_i64() {
                    Ok(Some(i))
                } else if v.as_u64().is_some() {
                    Ok(Some(i64::MAX))
                } else {
                    Err(ApiError::bad(
                        k,
                        format!("{k} must be an integer, got {}", kind(v)),
                    ))
                }
            }
        }
    }

    /// A boolean.
    pub fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.value(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::bad(
                k,
                format!("{k} must be a boolean, got {}", kind(v)),
            )),
        }
    }

    /// A string.
    pub fn str(&self, k: &str) -> Result<Option<&'a str>, ApiError> {
        match self.value(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::bad(
                k,
                format!("{k} must be a string, got {}", kind(v)),
            )),
        }
    }
}

/// JSON type name of a value, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a non-integer number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
