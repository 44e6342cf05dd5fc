//! Token ids to text, safely: incremental detokenization that never emits a
//! broken UTF-8 sequence, and stop strings that hold back a partial match so
//! it never leaks into the output.

use reprise_engine::tokenizer::{Tokenizer, TokenizerError};

/// Incremental detokenizer (vLLM's prefix/read offsets): decodes a short window
/// of recent ids so multi-token merges and multi-byte characters come out whole.
/// Owns no tokenizer; the caller passes it on every push.
#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
}

impl Detokenizer {
    /// A fresh detokenizer.
    pub fn new(skip_special_tokens: bool) -> Self {
        Self {
            skip_special_tokens,
            ..Default::default()
        }
    }

    /// Adds one token and returns the text it completes (empty while a character
    /// is incomplete).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let skip = self.skip_special_tokens;
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], skip)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let new = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }
}

/// Result of feeding text to a [`StopMatcher`].
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to emit now (possibly empty: a partial match is held back).
    Continue(String),
    /// A stop string matched: the text before it, and generation ends.
    Stopped(String),
}

/// Finds stop strings in streamed text without ever emitting part of one.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Feeds new text; returns what may be emitted.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_string());
        }
        self.held.push_str(text);
        // Earliest match wins (then the longest at that position).
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(pos) = hit {
            let out = self.held[..pos].to_string();
            self.held.clear();
            return StopOutcome::Stopped(out);
        }
        // Hold back the longest suffix that is a proper prefix of a stop string.
        let keep = self.partial_suffix_len();
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopOutcome::Continue(out)
    }

    /// At the end of generation: the held-back text (it did not become a stop string).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    fn partial_suffix_len(&self) -> usize {
        let h = &self.held;
        let mut best = 0;
        for s in &self.stops {
            let max = s.len().saturating_sub(1).min(h.len());
            for k in (best + 1..=max).rev() {
                let start = h.len() - k;
                if h.is_char_boundary(start) && s.starts_with(&h[start..]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(m: &mut StopMatcher, pieces: &[&str]) -> (String, bool) {
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_string_split_over_pieces_never_leaks() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()]);
        let mut emitted = Vec::new();
        for p in ["Hello", " world", "\n", "\nUs", "er", ": more"] {
            match m.push(p) {
                StopOutcome::Continue(t) => emitted.push(t),
                StopOutcome::Stopped(t) => {
                    emitted.push(t);
                    break;
                }
            }
        }
        assert_eq!(emitted, ["Hello", " world", "", "", "", ""]);
        assert_eq!(emitted.concat(), "Hello world");
    }

    #[test]
    fn partial_match_that_fails_is_released() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("abc ST"), StopOutcome::Continue("abc ".into()));
        assert_eq!(m.push("OP!"), StopOutcome::Stopped("".into()));
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(feed(&mut m, &["abc ST", "ay"]), ("abc STay".into(), false));
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(feed(&mut m, &["x S", "T"]), ("x ST".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = StopMatcher::new(vec!["world".into(), "o".into()]);
        assert_eq!(feed(&mut m, &["hello world"]), ("hell".into(), true));
        let mut m = StopMatcher::new(vec!["bc".into(), "abcd".into()]);
        assert_eq!(feed(&mut m, &["xab", "cd"]), ("x".into(), true));
    }

    #[test]
    fn no_stops_passes_through_and_multibyte_is_kept_whole() {
        let mut m = StopMatcher::new(vec![]);
        assert_eq!(feed(&mut m, &["a", "é"]), ("aé".into(), false));
        // A stop string starting with a multi-byte char: hold-back respects char boundaries.
        let mut m = StopMatcher::new(vec!["🙏!".into()]);
        assert_eq!(m.push("ok 🙏"), StopOutcome::Continue("ok ".into()));
        assert_eq!(m.push("?"), StopOutcome::Continue("🙏?".into()));
        assert_eq!(m.push("🙏!"), StopOutcome::Stopped("".into()));
    }

    /// GPT-2 byte-level alphabet: byte -> the char the BPE vocabulary uses for it.
    fn byte_char(b: u8) -> char {
        let printable = |b: u8| {
            (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
        };
        if printable(b) {
            return char::from(b);
        }
        let mut n = 0u32;
        for x in 0..=255u8 {
            if !printable(x) {
                if x == b {
                    return char::from_u32(256 + n).unwrap_or('?');
                }
                n += 1;
            }
        }
        '?'
    }

    #[test]
    fn detokenizer_holds_incomplete_utf8_until_the_character_is_whole() {
        // One token per byte of "🙏" (F0 9F 99 8F), plus "a" and "é" (C3 A9).
        let mut tokens: Vec<String> = "🙏".bytes().map(|b| byte_char(b).to_string()).collect();
        tokens.push("a".into());
        tokens.extend("é".bytes().map(|b| byte_char(b).to_string()));
        let tok = Tokenizer::from_gguf_vocab(&tokens, &[], None, "gpt2").expect("toy tokenizer");
        let mut d = Detokenizer::new(true);
        let out: Vec<String> = [4u32, 0, 1, 2, 3, 5, 6, 4]
            .iter()
            .map(|&id| d.push(&tok, id).expect("decode"))
            .collect();
        assert_eq!(out, ["a", "", "", "", "🙏", "", "é", "a"]);
        for piece in &out {
            assert!(!piece.contains('\u{FFFD}'));
        }
    }
}
