//! Tool calls in a model's output: the parsers that find `auto` calls in free
//! text (Hermes `<tool_call>` JSON for Qwen2/Qwen3, Llama 3's JSON format), the
//! reader of a `required` choice's JSON list, and where streamed text may hold the
//! start of a call.

use serde_json::{json, Value};

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

    /// The format the templates of a model architecture (HF `model_type` or GGUF
    /// `general.architecture`) use.
    pub fn for_architecture(arch: &str) -> Self {
        let a = arch.to_ascii_lowercase();
        if a.starts_with("qwen") {
            Self::Hermes
        } else if a.starts_with("llama") || a.starts_with("smollm") || a == "mistral" {
            Self::Llama3Json
        } else {
            Self::None
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
