//! Structured outputs: grammars (JSON schema, regex, choice, Lark) compiled by
//! llguidance over the model's vocabulary, and the per-sequence matcher that turns
//! a grammar's state into a token mask.
//!
//! The trie is built here from the tokenizer's own vocabulary (llguidance's adapter
//! crate pins an older `tokenizers`). A request's grammar is compiled once, on the
//! HTTP side, so a bad schema is a 400 before anything is queued; each sequence
//! then runs its own [`GrammarState`], whose mask for the next token is computed
//! while the model's forward pass runs (see `model_executor`).

use crate::tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory, TokenParser};
use reprise_protocol::TokenId;
use serde_json::Value;
use std::sync::Arc;

/// Grammar failures: a grammar that does not compile, or a vocabulary llguidance
/// cannot read.
#[derive(Debug, thiserror::Error)]
pub enum GrammarError {
    /// The tokenizer's vocabulary could not be turned into a token trie.
    #[error("structured outputs are unavailable for this tokenizer: {0}")]
    Vocabulary(String),
    /// The schema, regex or grammar is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// What a request constrains its output to (vLLM's `structured_outputs`).
#[derive(Clone, Debug, PartialEq)]
pub enum GrammarSpec {
    /// JSON valid under this JSON schema.
    JsonSchema(Value),
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// Text fully matching this regular expression.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect (vLLM's `grammar`; EBNF-like).
    Lark(String),
}

impl GrammarSpec {
    fn top_level(&self) -> Result<TopLevelGrammar, GrammarError> {
        Ok(match self {
            GrammarSpec::JsonSchema(s) => TopLevelGrammar::from_json_schema(compact(s.clone())),
            GrammarSpec::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"})))
            }
            GrammarSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            GrammarSpec::Choice(choices) => {
                if choices.is_empty() {
                    return Err(GrammarError::Invalid("choice must not be empty".into()));
                }
                // Lark string literals take JSON's escapes.
                let alts: Vec<String> = choices
                    .iter()
                    .map(|c| serde_json::to_string(c).unwrap_or_default())
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
            }
            GrammarSpec::Lark(g) => TopLevelGrammar::from_lark_or_grammar_list(g)
                .map_err(|e| GrammarError::Invalid(e.to_string()))?,
        })
    }
}

/// JSON written as `{"a": 1, "b": [2, 3]}`: one space after `:` and `,`, none
/// elsewhere. llguidance's default allows any whitespace between tokens, and small
/// models then fill `max_tokens` with newlines and indentation (measured with the
/// default model); a schema's own `x-guidance` options win.
fn compact(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
        });
    }
    schema
}

/// A compiled grammar, ready to start a matcher per sequence.
#[derive(Clone)]
pub struct Constraint {
    parser: TokenParser,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Constraint")
    }
}

impl Constraint {
    /// A fresh per-sequence state at the grammar's start.
    pub fn start(&self) -> GrammarState {
        GrammarState {
            matcher: Matcher::new(Ok(self.parser.clone())),
            mask: None,
            eos: self.parser.token_env.tok_trie().eos_token(),
        }
    }
}

/// The tokenizer as llguidance sees it: the trie, and our own encoder for the
/// forced strings grammars contain.
struct TokEnvImpl {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for TokEnvImpl {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tokenizer
            .encode(&String::from_utf8_lossy(s), false)
            .unwrap_or_default()
    }
}

/// Compiles grammars for one model's vocabulary (built once per process).
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrammarCompiler")
    }
}

impl GrammarCompiler {
    /// A compiler for `tokenizer`'s vocabulary padded to the model's `vocab_size`
    /// rows; `eos` is the token a finished grammar allows.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        vocab_size: usize,
        eos: TokenId,
    ) -> Result<Self, GrammarError> {
        let json = tokenizer
            .to_json_value()
            .map_err(|e| GrammarError::Vocabulary(e.to_string()))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| GrammarError::Vocabulary(e.to_string()))?;
        let n = vocab_size.max(words.len());
        words.resize(n, Vec::new());
        for (id, w) in words.iter_mut().enumerate() {
            // Ids with no text (embedding padding) become unreachable special tokens.
            if w.is_empty() {
                w.push(TokTrie::SPECIAL_TOKEN_MARKER);
                w.extend(format!("<[{id}]>").bytes());
            }
        }
        let info = TokRxInfo::new(n as u32, eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(TokEnvImpl { trie, tokenizer });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| GrammarError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// Compiles `spec`; an invalid schema, regex or grammar is an error naming it.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Constraint, GrammarError> {
        let parser = self
            .factory
            .create_parser(spec.top_level()?)
            .map_err(|e| GrammarError::Invalid(e.to_string()))?;
        Ok(Constraint { parser })
    }
}

/// One sequence's position in its grammar and the mask for its next token.
#[derive(Clone)]
pub struct GrammarState {
    matcher: Matcher,
    mask: Option<SimpleVob>,
    eos: TokenId,
}

impl std::fmt::Debug for GrammarState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarState")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl GrammarState {
    /// Computes the mask for the next token, if not already done: the expensive
    /// part, run while the forward pass computes the logits it will be applied to.
    pub fn prepare(&mut self) {
        if self.mask.is_none() {
            // A finished grammar (or one in error) allows only EOS.
            self.mask = Some(
                self.matcher
                    .compute_mask_or_eos()
                    .unwrap_or_else(|_| self.eos_only()),
            );
        }
    }

    fn eos_only(&self) -> SimpleVob {
        let mut v = SimpleVob::alloc(self.eos as usize + 1);
        v.allow_token(self.eos);
        v
    }

    /// Sets every token the grammar does not allow to −∞.
    pub fn apply(&mut self, logits: &mut [f32]) {
        self.prepare();
        if let Some(mask) = &self.mask {
            let len = mask.len();
            for (i, v) in logits.iter_mut().enumerate() {
                if i >= len || !mask.is_allowed(i as TokenId) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// Advances past the sampled token; the next mask is computed afresh.
    pub fn accept(&mut self, token: TokenId) {
        self.mask = None;
        if token != self.eos || !self.matcher.is_stopped() {
            let _ = self.matcher.consume_token(token);
        }
    }

    /// Whether the grammar is complete (only EOS may follow).
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE vocabulary of single characters and a few words, enough to
    /// spell any ASCII text.
    fn tokenizer() -> Arc<Tokenizer> {
        let mut vocab = serde_json::Map::new();
        let mut id = 0u32;
        let mut add = |s: &str, vocab: &mut serde_json::Map<String, Value>| {
            vocab.insert(s.to_string(), Value::from(id));
            id += 1;
        };
        for c in (0x21u8..0x7f).map(|b| b as char) {
            add(&c.to_string(), &mut vocab);
        }
        add("Ġ", &mut vocab); // space
        add("Ċ", &mut vocab); // newline
        for w in ["yes", "no", "true", "false", "\"name\""] {
            add(w, &mut vocab);
        }
        let eos = id;
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [{"id": eos, "content": "<|end|>", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "vocab": vocab, "merges": []},
        });
        Arc::new(Tokenizer::from_json(&json.to_string()).expect("tokenizer"))
    }

    fn compiler() -> (GrammarCompiler, Arc<Tokenizer>, TokenId) {
        let tok = tokenizer();
        let eos = tok.token_to_id("<|end|>").expect("eos");
        // Two padding rows beyond the tokenizer, as models often have.
        let c = GrammarCompiler::new(tok.clone(), tok.vocab_size() + 2, eos).expect("compiler");
        (c, tok, eos)
    }

    /// Greedy decoding under the grammar where the "model" prefers `wanted`'s next
    /// character, else the lowest allowed id.
    fn generate(
        state: &mut GrammarState,
        tok: &Tokenizer,
        eos: TokenId,
        vocab: usize,
        wanted: &str,
    ) -> String {
        let mut out = Vec::new();
        for _ in 0..64 {
            let text = tok.decode(&out, true).unwrap_or_default();
            let mut logits = vec![0.0f32; vocab];
            if let Some(next) = wanted.get(text.len()..).and_then(|s| s.chars().next()) {
                let t = if next == ' ' {
                    "Ġ".to_string()
                } else {
                    next.to_string()
                };
                if let Some(id) = tok.token_to_id(&t) {
                    logits[id as usize] = 5.0;
                }
            } else {
                logits[eos as usize] = 5.0;
            }
            state.prepare();
            state.apply(&mut logits);
            let t = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap_or(0) as u32;
            assert!(logits[t as usize].is_finite(), "some token allowed");
            if t == eos {
                break;
            }
            state.accept(t);
            out.push(t);
        }
        tok.decode(&out, true).unwrap_or_default()
    }

    #[test]
    fn choice_regex_and_schema_constrain_the_output() {
        let (c, tok, eos) = compiler();
        let vocab = tok.vocab_size() + 2;
        // The model wants "maybe"; the choice forces one of the two.
        let mut s = c
            .compile(&GrammarSpec::Choice(vec!["yes".into(), "no".into()]))
            .unwrap()
            .start();
        let out = generate(&mut s, &tok, eos, vocab, "maybe");
        assert!(out == "yes" || out == "no", "{out}");
        assert!(s.is_stopped());

        let mut s = c
            .compile(&GrammarSpec::Regex("[0-9]{3}-[a-z]+".into()))
            .unwrap()
            .start();
        let out = generate(&mut s, &tok, eos, vocab, "12x-ab");
        let re = |o: &str| {
            o.len() >= 5
                && o[..3].chars().all(|c| c.is_ascii_digit())
                && &o[3..4] == "-"
                && o[4..].chars().all(|c| c.is_ascii_lowercase())
        };
        assert!(re(&out), "{out}");

        let schema = serde_json::json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["a"], "additionalProperties": false});
        let mut s = c.compile(&GrammarSpec::JsonSchema(schema)).unwrap().start();
        let out = generate(&mut s, &tok, eos, vocab, "{\"a\": 42}");
        let v: Value = serde_json::from_str(&out).expect(&out);
        let a = v["a"].as_i64().expect("integer");
        assert!((0..=9).contains(&a), "{out}");
    }

    #[test]
    fn invalid_grammars_are_errors() {
        let (c, _, _) = compiler();
        for spec in [
            GrammarSpec::Regex("(unclosed".into()),
            GrammarSpec::Choice(vec![]),
            GrammarSpec::Lark("start: undefined_rule".into()),
            GrammarSpec::JsonSchema(serde_json::json!({"type": "no-such-type"})),
        ] {
            assert!(
                matches!(c.compile(&spec), Err(GrammarError::Invalid(_))),
                "{spec:?}"
            );
        }
    }
}
