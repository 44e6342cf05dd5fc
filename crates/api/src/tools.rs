//! Tool calls (OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`): the tools
//! as the chat template sees them, the grammar that makes `required` and named
//! choices always valid (vLLM's schemas), and the parsers that find calls in a
//! model's free output for `auto` (Hermes `<tool_call>` JSON for Qwen2/Qwen3,
//! Llama 3's JSON format).

use crate::errors::ApiError;
use crate::reader::{kind, Fields};
use reprise_engine::grammar::GrammarSpec;
use reprise_engine::model::Family;
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

/// Which format `auto` tool calls are parsed from (`--tool-call-parser`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolParser {
    /// `<tool_call>{"name": ..., "arguments": ...}</tool_call>` (Qwen2, Qwen3, Hermes).
    Hermes,
    /// `{"name": ..., "parameters": ...}` objects, `;`-separated (Llama 3.x).
    Llama3Json,
    /// No parsing: `auto` returns the text as content.
    None,
}

impl ToolParser {
    /// Parses a `--tool-call-parser` name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "hermes" => Some(Self::Hermes),
            "llama3_json" => Some(Self::Llama3Json),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    /// The format a model family's templates use.
    pub fn for_family(family: Family) -> Self {
        match family {
            Family::Qwen2 | Family::Qwen3 => Self::Hermes,
            Family::Llama => Self::Llama3Json,
        }
    }
}

/// One parsed call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// Function name.
    pub name: String,
    /// Its arguments as JSON text.
    pub arguments: String,
}

impl ToolCall {
    /// OpenAI's `tool_calls[i]` object.
    pub fn to_json(&self, id: &str) -> Value {
        json!({"id": id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}})
    }
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

/// The calls in a `required` choice's output (a JSON list under its grammar).
pub fn parse_required(text: &str) -> Vec<ToolCall> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|it| {
            Some(ToolCall {
                name: it.get("name")?.as_str()?.to_string(),
                arguments: it.get("parameters").map(Value::to_string)?,
            })
        })
        .collect()
}

/// Text and calls of an `auto` choice.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// Text outside the calls (`None` when there is none).
    pub content: Option<String>,
    /// The calls, in order.
    pub calls: Vec<ToolCall>,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

/// One `{"name", "arguments" | "parameters"}` object as a call.
fn call_of(v: &Value) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    // Arguments given as JSON text stay as they are.
    let arguments = match args {
        Value::String(s) => s,
        other => other.to_string(),
    };
    Some(ToolCall { name, arguments })
}

/// Finds the calls in `text` with `parser`; text that holds none is all content.
pub fn parse_auto(parser: ToolParser, text: &str) -> Parsed {
    let plain = || Parsed {
        content: Some(text.to_string()),
        calls: Vec::new(),
    };
    match parser {
        ToolParser::None => plain(),
        ToolParser::Hermes => {
            let Some(first) = text.find(HERMES_OPEN) else {
                return plain();
            };
            let mut calls = Vec::new();
            let mut rest = &text[first..];
            while let Some(start) = rest.find(HERMES_OPEN) {
                let body = &rest[start + HERMES_OPEN.len()..];
                let (inner, next) = match body.find(HERMES_CLOSE) {
                    Some(end) => (&body[..end], &body[end + HERMES_CLOSE.len()..]),
                    None => (body, ""),
                };
                match serde_json::from_str::<Value>(inner.trim())
                    .ok()
                    .as_ref()
                    .and_then(call_of)
                {
                    Some(c) => calls.push(c),
                    // A malformed call: vLLM returns the whole text as content.
                    None => return plain(),
                }
                rest = next;
            }
            let before = text[..first].trim_end();
            Parsed {
                content: (!before.is_empty()).then(|| before.to_string()),
                calls,
            }
        }
        ToolParser::Llama3Json => {
            let t = text.trim_start();
            let t = t.strip_prefix(PYTHON_TAG).unwrap_or(t).trim();
            if !t.starts_with('{') {
                return plain();
            }
            // Objects one after another, `;` between them.
            let mut calls = Vec::new();
            let mut rest = t;
            while !rest.is_empty() {
                let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
                let Some(Ok(v)) = it.next() else {
                    return plain();
                };
                let Some(c) = call_of(&v) else {
                    return plain();
                };
                calls.push(c);
                rest = rest[it.byte_offset()..].trim_start();
                rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
            }
            if calls.is_empty() {
                return plain();
            }
            Parsed {
                content: None,
                calls,
            }
        }
    }
}

/// Where, in streamed text, a tool call may have begun under `parser` (the text
/// from there is held back until the choice ends); `None` when all of it is
/// content so far.
pub fn hold_from(parser: ToolParser, text: &str) -> Option<usize> {
    match parser {
        ToolParser::None => None,
        ToolParser::Hermes => text.find(HERMES_OPEN).or_else(|| {
            // A suffix that could grow into the opening tag.
            (1..HERMES_OPEN.len())
                .rev()
                .find(|&k| {
                    text.len() >= k
                        && text.is_char_boundary(text.len() - k)
                        && text.ends_with(&HERMES_OPEN[..k])
                })
                .map(|k| text.len() - k)
        }),
        ToolParser::Llama3Json => {
            let t = text.trim_start();
            if t.is_empty()
                || t.starts_with('{')
                || t.starts_with(PYTHON_TAG)
                || PYTHON_TAG.starts_with(t)
            {
                Some(0)
            } else {
                None
            }
        }
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

    #[test]
    fn hermes_calls_and_content() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"now\", \"arguments\": {}}</tool_call>";
        let p = parse_auto(ToolParser::Hermes, text);
        assert_eq!(p.content.as_deref(), Some("Let me check."));
        assert_eq!(p.calls.len(), 2);
        assert_eq!(p.calls[0].name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&p.calls[0].arguments).unwrap(),
            json!({"city": "Paris"})
        );
        // Unterminated at the end of the output still counts; malformed is content.
        let p = parse_auto(
            ToolParser::Hermes,
            "<tool_call>{\"name\": \"now\", \"arguments\": {}}",
        );
        assert_eq!((p.content, p.calls.len()), (None, 1));
        let p = parse_auto(ToolParser::Hermes, "<tool_call>{oops</tool_call>");
        assert!(p.calls.is_empty() && p.content.is_some());
        assert_eq!(parse_auto(ToolParser::Hermes, "just text").calls.len(), 0);
    }

    #[test]
    fn llama3_calls() {
        let p = parse_auto(
            ToolParser::Llama3Json,
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}",
        );
        assert_eq!(p.calls.len(), 1);
        assert_eq!(p.content, None);
        let p = parse_auto(
            ToolParser::Llama3Json,
            "<|python_tag|>{\"name\": \"now\", \"parameters\": {}}; {\"name\": \"now\", \"parameters\": {}}",
        );
        assert_eq!(p.calls.len(), 2);
        let p = parse_auto(ToolParser::Llama3Json, "The weather is fine.");
        assert_eq!(p.calls.len(), 0);
        assert_eq!(p.content.as_deref(), Some("The weather is fine."));
    }

    #[test]
    fn required_output_and_stream_hold_back() {
        let calls = parse_required("[{\"name\": \"now\", \"parameters\": {}}, {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}]");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].arguments, "{\"city\":\"Rome\"}");
        assert_eq!(hold_from(ToolParser::Hermes, "Sure <tool"), Some(5));
        assert_eq!(hold_from(ToolParser::Hermes, "Sure <tool_call>{"), Some(5));
        assert_eq!(hold_from(ToolParser::Hermes, "Sure."), None);
        assert_eq!(hold_from(ToolParser::Llama3Json, " {\"na"), Some(0));
        assert_eq!(hold_from(ToolParser::Llama3Json, "Hello"), None);
        assert_eq!(hold_from(ToolParser::None, "<tool_call>"), None);
    }
}
