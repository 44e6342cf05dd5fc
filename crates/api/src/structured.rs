//! The request fields that constrain output to a grammar, as vLLM and OpenAI
//! spell them: `response_format` (`json_object`, `json_schema`), vLLM's
//! `structured_outputs` (`json`, `regex`, `choice`, `grammar`, `json_object`) and
//! the older `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`.
//! At most one may be set; compiling happens later (`ModelInfo::compile_grammar`).

use crate::errors::ApiError;
use crate::reader::{kind, Fields};
use reprise_text::grammar::GrammarSpec;
use serde_json::Value;

/// The grammar a request asks for, with the field that asked (for errors).
#[derive(Clone, Debug, PartialEq)]
pub struct Structured {
    /// What the output must follow.
    pub spec: GrammarSpec,
    /// The field it came from.
    pub param: &'static str,
}

/// Reads whichever structured-output field the request sets (an error if several).
pub fn parse(f: &Fields) -> Result<Option<Structured>, ApiError> {
    let mut found: Vec<Structured> = Vec::new();
    if let Some(rf) = f.value("response_format") {
        if let Some(spec) = response_format(rf)? {
            found.push(Structured {
                spec,
                param: "response_format",
            });
        }
    }
    if let Some(so) = f.value("structured_outputs") {
        let obj = so.as_object().ok_or_else(|| {
            ApiError::bad(
                "structured_outputs",
                format!("structured_outputs must be an object, got {}", kind(so)),
            )
        })?;
        let mut inner = Vec::new();
        for (k, v) in obj {
            if v.is_null() || (k == "json_object" && v == &Value::Bool(false)) {
                continue;
            }
            let spec = match k.as_str() {
                "json" => json_schema_value(v, "structured_outputs")?,
                "regex" => GrammarSpec::Regex(string(v, "structured_outputs", "regex")?),
                "choice" => choice(v, "structured_outputs")?,
                "grammar" => GrammarSpec::Lark(string(v, "structured_outputs", "grammar")?),
                "json_object" if v == &Value::Bool(true) => GrammarSpec::JsonObject,
                // JSON is written compactly whatever it says (see `grammar.rs`).
                "disable_any_whitespace" if v.is_boolean() => continue,
                "backend" if matches!(v.as_str(), Some("auto" | "guidance" | "llguidance")) => {
                    continue
                }
                other => {
                    return Err(ApiError::bad(
                        "structured_outputs",
                        format!("structured_outputs.{other} is not supported (json, regex, choice, grammar or json_object)"),
                    ))
                }
            };
            inner.push(spec);
        }
        if inner.len() > 1 {
            return Err(ApiError::bad(
                "structured_outputs",
                "structured_outputs must set only one of json, regex, choice, grammar and json_object",
            ));
        }
        found.extend(inner.into_iter().map(|spec| Structured {
            spec,
            param: "structured_outputs",
        }));
    }
    for (param, make) in [
        (
            "guided_json",
            json_schema_value as fn(&Value, &'static str) -> _,
        ),
        ("guided_regex", |v: &Value, p| {
            Ok(GrammarSpec::Regex(string(v, p, "guided_regex")?))
        }),
        ("guided_choice", choice),
        ("guided_grammar", |v: &Value, p| {
            Ok(GrammarSpec::Lark(string(v, p, "guided_grammar")?))
        }),
    ] {
        if let Some(v) = f.value(param) {
            found.push(Structured {
                spec: make(v, param)?,
                param,
            });
        }
    }
    if found.len() > 1 {
        return Err(ApiError::bad(
            found[1].param,
            format!(
                "{} and {} both constrain the output; set only one",
                found[0].param, found[1].param
            ),
        ));
    }
    Ok(found.pop())
}

fn response_format(v: &Value) -> Result<Option<GrammarSpec>, ApiError> {
    let bad = |m: String| ApiError::bad("response_format", m);
    let obj = v.as_object().ok_or_else(|| {
        bad(format!(
            "response_format must be an object, got {}",
            kind(v)
        ))
    })?;
    match obj.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GrammarSpec::JsonObject)),
        Some("json_schema") => {
            let js = obj
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    bad("response_format.json_schema must be an object with a schema".into())
                })?;
            let schema = js.get("schema").filter(|s| !s.is_null()).ok_or_else(|| {
                bad("response_format.json_schema.schema is required".into())
            })?;
            if !schema.is_object() && !schema.is_boolean() {
                return Err(bad(
                    "response_format.json_schema.schema must be a JSON schema object".into(),
                ));
            }
            Ok(Some(GrammarSpec::JsonSchema(schema.clone())))
        }
        Some(other) => Err(bad(format!(
            "response_format.type must be \"text\", \"json_object\" or \"json_schema\", got {other:?}"
        ))),
        None => Err(bad("response_format.type is required".into())),
    }
}

/// A JSON schema given as an object or as its JSON text.
fn json_schema_value(v: &Value, param: &'static str) -> Result<GrammarSpec, ApiError> {
    match v {
        Value::Object(_) | Value::Bool(_) => Ok(GrammarSpec::JsonSchema(v.clone())),
        Value::String(s) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(|s| s.is_object())
            .map(GrammarSpec::JsonSchema)
            .ok_or_else(|| ApiError::bad(param, "the JSON schema is not valid JSON")),
        other => Err(ApiError::bad(
            param,
            format!("the JSON schema must be an object, got {}", kind(other)),
        )),
    }
}

fn string(v: &Value, param: &'static str, what: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        other => Err(ApiError::bad(
            param,
            format!("{what} must be a non-empty string, got {}", kind(other)),
        )),
    }
}

fn choice(v: &Value, param: &'static str) -> Result<GrammarSpec, ApiError> {
    let bad = || ApiError::bad(param, "choice must be a non-empty list of strings");
    let a = v.as_array().filter(|a| !a.is_empty()).ok_or_else(bad)?;
    a.iter()
        .map(|c| c.as_str().map(str::to_string).ok_or_else(bad))
        .collect::<Result<Vec<_>, _>>()
        .map(GrammarSpec::Choice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Result<Option<GrammarSpec>, ApiError> {
        parse(&Fields::new(&v)?).map(|s| s.map(|s| s.spec))
    }

    #[test]
    fn every_spelling_reads_to_the_same_grammar() {
        let schema = json!({"type": "object"});
        for v in [
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}),
            json!({"structured_outputs": {"json": schema}}),
            json!({"guided_json": schema}),
            json!({"guided_json": schema.to_string()}),
        ] {
            assert_eq!(
                spec(v.clone()).unwrap(),
                Some(GrammarSpec::JsonSchema(schema.clone())),
                "{v}"
            );
        }
        assert_eq!(
            spec(json!({"response_format": {"type": "json_object"}})).unwrap(),
            Some(GrammarSpec::JsonObject)
        );
        assert_eq!(
            spec(json!({"response_format": {"type": "text"}})).unwrap(),
            None
        );
        assert_eq!(
            spec(json!({"structured_outputs": {"choice": ["a", "b"]}})).unwrap(),
            Some(GrammarSpec::Choice(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            spec(json!({"guided_regex": "a+"})).unwrap(),
            Some(GrammarSpec::Regex("a+".into()))
        );
        assert_eq!(
            spec(json!({"structured_outputs": {"grammar": "start: \"x\""}})).unwrap(),
            Some(GrammarSpec::Lark("start: \"x\"".into()))
        );
    }

    #[test]
    fn conflicts_and_bad_shapes_are_400s() {
        for v in [
            json!({"guided_regex": "a", "guided_choice": ["b"]}),
            json!({"response_format": {"type": "json_object"}, "guided_regex": "a"}),
            json!({"structured_outputs": {"regex": "a", "choice": ["b"]}}),
            json!({"structured_outputs": {"bogus": 1}}),
            json!({"structured_outputs": "json"}),
            json!({"response_format": {"type": "yaml"}}),
            json!({"response_format": {"type": "json_schema"}}),
            json!({"guided_choice": []}),
            json!({"guided_choice": [1]}),
            json!({"guided_json": "{not json"}),
            json!({"guided_regex": ""}),
        ] {
            assert_eq!(spec(v.clone()).unwrap_err().status().as_u16(), 400, "{v}");
        }
    }
}
