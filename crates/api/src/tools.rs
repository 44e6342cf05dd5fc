//! Tool calls (OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`): the tools
//! as the chat template sees them and the grammar that makes `required` and named
//! choices always valid (vLLM's schemas). The parsers that find calls in a model's
//! output are `reprise_text::tools`.

use crate::errors::ApiError;
use crate::reader::{kind, Fields};
use reprise_text::grammar::GrammarSpec;
use serde_json::{json, Value};

/// One function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// JSON schema of its arguments (`{"type": "object"}` when none was given).
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// Never call a tool.
    None,
    /// The model decides; calls are parsed from its output.
    Auto,
    /// At least one call, constrained by grammar.
    Required,
    /// Exactly this function, constrained by grammar.
    Named(String),
}

/// A chat request's tools.
#[derive(Clone, Debug, PartialEq)]
pub struct Tools {
    /// The functions.
    pub tools: Vec<Tool>,
    /// The `tools` list as given, for the template.
    pub raw: Value,
    /// How the model may use them.
    pub choice: ToolChoice,
    /// Whether several calls may come in one turn (`parallel_tool_calls`, default true).
    pub parallel: bool,
}

/// Reads `tools`, `tool_choice` and `parallel_tool_calls`; `None` without tools.
pub fn parse(f: &Fields) -> Result<Option<Tools>, ApiError> {
    let raw = f.value("tools");
    let choice_v = f.value("tool_choice");
    let parallel = f.bool("parallel_tool_calls")?.unwrap_or(true);
    let list = match raw {
        None => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(v) => {
            return Err(ApiError::bad(
                "tools",
                format!("tools must be a list, got {}", kind(v)),
            ))
        }
    };
    let mut tools = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let bad = |m: &str| ApiError::bad("tools", format!("tools[{i}]: {m}"));
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad("type must be \"function\""));
        }
        let func = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("function must be an object"))?;
        let name = func
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("function.name must be a non-empty string"))?;
        let parameters = match func.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err(bad("function.parameters must be a JSON schema object")),
        };
        tools.push(Tool {
            name: name.to_string(),
            parameters,
        });
    }
    let choice = match choice_v {
        None if tools.is_empty() => ToolChoice::None,
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::bad(
                    "tool_choice",
                    format!("tool_choice must be \"none\", \"auto\", \"required\" or a named function, got {other:?}"),
                ))
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::bad(
                        "tool_choice",
                        "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            ToolChoice::Named(name.to_string())
        }
        Some(v) => {
            return Err(ApiError::bad(
                "tool_choice",
                format!(
                    "tool_choice must be a string or an object, got {}",
                    kind(v)
                ),
            ))
        }
    };
    match &choice {
        ToolChoice::Required | ToolChoice::Auto if tools.is_empty() => {
            return Err(ApiError::bad(
                "tool_choice",
                "tool_choice needs a non-empty tools list",
            ))
        }
        ToolChoice::Named(n) if !tools.iter().any(|t| &t.name == n) => {
            return Err(ApiError::bad(
                "tool_choice",
                format!("tool_choice names {n:?}, which is not in tools"),
            ))
        }
        _ => {}
    }
    if tools.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tools {
        tools,
        raw: Value::Array(list),
        choice,
        parallel,
    }))
}

impl Tools {
    /// The grammar `required` and named choices generate under (vLLM's schemas):
    /// a named call's output is its arguments object; `required`'s is a list of
    /// `{"name", "parameters"}` objects, one of them unless calls may be parallel.
    pub fn grammar(&self) -> Option<GrammarSpec> {
        match &self.choice {
            ToolChoice::Named(n) => self
                .tools
                .iter()
                .find(|t| &t.name == n)
                .map(|t| GrammarSpec::JsonSchema(t.parameters.clone())),
            ToolChoice::Required => {
                let any_of: Vec<Value> = self
                    .tools
                    .iter()
                    .map(|t| {
                        json!({"type": "object", "properties": {
                            "name": {"type": "string", "enum": [t.name]},
                            "parameters": t.parameters},
                            "required": ["name", "parameters"], "additionalProperties": false})
                    })
                    .collect();
                let mut schema =
                    json!({"type": "array", "minItems": 1, "items": {"anyOf": any_of}});
                if !self.parallel {
                    schema["maxItems"] = json!(1);
                }
                Some(GrammarSpec::JsonSchema(schema))
            }
            ToolChoice::None | ToolChoice::Auto => None,
        }
    }

    /// Whether the template is shown the tools (not with `tool_choice: "none"`,
    /// as vLLM's default).
    pub fn for_template(&self) -> Option<&Value> {
        (self.choice != ToolChoice::None).then_some(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(v: Value) -> Result<Option<Tools>, ApiError> {
        parse(&Fields::new(&v)?)
    }

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "parameters":
            {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}}])
    }

    #[test]
    fn choices_and_their_grammars() {
        let t = tools(json!({"tools": weather()})).unwrap().unwrap();
        assert_eq!(t.choice, ToolChoice::Auto);
        assert_eq!(t.grammar(), None);
        assert!(t.for_template().is_some());
        let t = tools(json!({"tools": weather(), "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}))
            .unwrap()
            .unwrap();
        assert_eq!(
            t.grammar(),
            Some(GrammarSpec::JsonSchema(
                weather()[0]["function"]["parameters"].clone()
            ))
        );
        let t = tools(
            json!({"tools": weather(), "tool_choice": "required", "parallel_tool_calls": false}),
        )
        .unwrap()
        .unwrap();
        let Some(GrammarSpec::JsonSchema(s)) = t.grammar() else {
            panic!("schema")
        };
        assert_eq!(s["maxItems"], 1);
        assert_eq!(
            s["items"]["anyOf"][1]["properties"]["name"]["enum"][0],
            "now"
        );
        let t = tools(json!({"tools": weather(), "tool_choice": "none"}))
            .unwrap()
            .unwrap();
        assert!(t.for_template().is_none());
        assert_eq!(tools(json!({"tool_choice": "none"})).unwrap(), None);
        for bad in [
            json!({"tools": weather(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            json!({"tool_choice": "required"}),
            json!({"tools": weather(), "tool_choice": "sometimes"}),
            json!({"tools": [{"type": "retrieval"}]}),
            json!({"tools": [{"type": "function", "function": {"parameters": {}}}]}),
            json!({"tools": {"a": 1}}),
        ] {
            assert_eq!(
                tools(bad.clone()).unwrap_err().status().as_u16(),
                400,
                "{bad}"
            );
        }
    }
}
