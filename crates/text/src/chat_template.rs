//! Chat templates rendered with minijinja, matching HF `apply_chat_template`
//! (jinja2 with `trim_blocks` and `lstrip_blocks`, `raise_exception`,
//! `bos_token` / `eos_token`, Python string methods).

use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

/// Chat template failures.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template does not compile.
    #[error("invalid chat template: {0}")]
    Compile(String),
    /// Rendering failed (including the template's own `raise_exception`).
    #[error("chat template error: {0}")]
    Render(String),
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, …
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn raise_exception(msg: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(_fmt: String) -> String {
    // No clock-dependent output: templates only use it for an informational date line.
    String::new()
}

impl ChatTemplate {
    /// Compiles `template`; `bos_token` / `eos_token` are exposed to it as variables.
    pub fn new(
        template: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", template.to_string())
            .map_err(|e| ChatTemplateError::Compile(e.to_string()))?;
        Ok(Self {
            env,
            source: template.to_string(),
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
        })
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` as HF `apply_chat_template(tokenize=False)` would.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_value(Value::from_serialize(messages), add_generation_prompt)
    }

    /// Renders message objects (e.g. with tool calls) and the request's tools, as
    /// HF's `apply_chat_template(messages, tools=tools)` does.
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with(
            Value::from_serialize(messages),
            tools.map(Value::from_serialize),
            add_generation_prompt,
        )
    }

    /// Renders arbitrary message objects (e.g. with tool calls) given as a minijinja value.
    pub fn render_value(
        &self,
        messages: Value,
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with(messages, None, add_generation_prompt)
    }

    fn render_with(
        &self,
        messages: Value,
        tools: Option<Value>,
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ChatTemplateError::Compile(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        })
        .map_err(|e| ChatTemplateError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_python_methods_and_raise() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}\n  {{ m['role'].upper() }}: {{ m.content.strip() }}\n{% endfor %}{% if messages|length > 2 %}{{ raise_exception('too many') }}{% endif %}",
            Some("<s>".into()),
            None,
        )
        .unwrap();
        let msgs = vec![ChatMessage::new("user", "  hi ")];
        // jinja2's lstrip_blocks strips only before `{%` tags, so the indent before
        // `{{` stays (checked against Python jinja2 with HF's settings).
        assert_eq!(t.render(&msgs, true).unwrap(), "<s>  USER: hi\n");
        let many = vec![msgs[0].clone(), msgs[0].clone(), msgs[0].clone()];
        assert!(matches!(
            t.render(&many, true),
            Err(ChatTemplateError::Render(_))
        ));
    }
}
