//! reprise's text side, shared by the engine, `reprise serve` and `reprise route`
//! (which tokenizes and renders templates without loading weights, so nothing here
//! links candle):
//!
//! - [`tokenizer`]: HF `tokenizer.json`, or byte-level BPE rebuilt from a GGUF vocabulary;
//! - [`chat_template`]: the model's Jinja chat template, rendered as HF renders it;
//! - [`detok`]: incremental detokenization and stop strings;
//! - [`grammar`]: structured-output grammars (llguidance) and their token masks;
//! - [`tools`]: tool calls found in a model's output;
//! - [`gguf`] and [`meta`]: a model source's text side from its files.

pub mod chat_template;
pub mod detok;
pub mod gguf;
pub mod grammar;
pub mod meta;
pub mod tokenizer;
pub mod tools;
