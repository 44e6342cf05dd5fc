//! Token ids to text, safely: incremental detokenization that never emits a
//! broken UTF-8 sequence, and stop strings that hold back a partial match so it
//! never leaks into the output. The engine runs them to end a sequence on the very
//! token that completes a stop string; the server runs the same code to produce the
//! text, so both agree on where the output ends.

use crate::tokenizer::{Tokenizer, TokenizerError};

/// Incremental detokenizer (vLLM's prefix/read offsets): decodes a short window
/// of recent ids so multi-token merges and multi-byte characters come out whole.
/// Owns no tokenizer; the caller passes it on every push.
#[derive(Clone, Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
    spaces_between_special_tokens: bool,
    last_added: bool,
}

impl Detokenizer {
    /// A fresh detokenizer. With special tokens kept, `spaces_between_special_tokens`
    /// false writes two consecutive added tokens with nothing between them (vLLM's
    /// option: some decoders join tokens with spaces).
    pub fn new(skip_special_tokens: bool, spaces_between_special_tokens: bool) -> Self {
        Self {
            skip_special_tokens,
            spaces_between_special_tokens: skip_special_tokens || spaces_between_special_tokens,
            ..Default::default()
        }
    }

    /// Adds one token and returns the text it completes (empty while a character
    /// is incomplete).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        if !self.spaces_between_special_tokens {
            let added = tok.added_token(id);
            let consecutive = self.last_added && added.is_some();
            self.last_added = added.is_some();
            if let (true, Some(text)) = (consecutive, added) {
                // The token's own text, with the window restarting at it.
                self.prefix_offset = self.ids.len() - 1;
                self.read_offset = self.ids.len();
                return Ok(text.to_string());
            }
        }
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
    /// Stop string number `stop` matched and generation ends: the rest of the output
    /// (up to the stop string, or through it when it is kept).
    Stopped {
        /// Output text not emitted yet.
        text: String,
        /// Index of the stop string that matched.
        stop: usize,
    },
}

/// Finds stop strings in streamed text. The first occurrence ends the output,
/// before the stop string or (`include_stop`) after it; without `include_stop` a
/// suffix that may be the start of a stop string is held back until decided, so
/// no part of one ever leaks.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    include_stop: bool,
    /// Text not yet decided on, after `emitted` bytes already emitted (kept only to
    /// find a match that spans pushes).
    held: String,
    emitted: usize,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings never match).
    pub fn new(stops: Vec<String>, include_stop: bool) -> Self {
        Self {
            stops,
            include_stop,
            held: String::new(),
            emitted: 0,
        }
    }

    /// The stop strings.
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// Whether there is nothing to match.
    pub fn is_empty(&self) -> bool {
        self.stops.iter().all(String::is_empty)
    }

    /// Feeds new text; returns what may be emitted.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.is_empty() {
            return StopOutcome::Continue(text.to_string());
        }
        self.held.push_str(text);
        // Earliest match wins, then the longest at that position.
        let hit = self
            .stops
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .filter_map(|(i, s)| {
                self.held
                    .find(s.as_str())
                    .map(|p| (p, usize::MAX - s.len(), i))
            })
            .min();
        if let Some((pos, _, stop)) = hit {
            let end = if self.include_stop {
                pos + self.stops[stop].len()
            } else {
                pos
            };
            let text = self.held.get(self.emitted..end).unwrap_or("").to_string();
            self.held.clear();
            self.emitted = 0;
            return StopOutcome::Stopped { text, stop };
        }
        if self.include_stop {
            // Emit everything; keep the last (longest stop − 1) bytes to match across pushes.
            let out = self.held[self.emitted..].to_string();
            let keep = self.longest_stop().saturating_sub(1);
            let mut cut = self.held.len().saturating_sub(keep);
            while !self.held.is_char_boundary(cut) {
                cut -= 1;
            }
            self.held.drain(..cut);
            self.emitted = self.held.len();
            StopOutcome::Continue(out)
        } else {
            let cut = self.held.len() - self.partial_suffix_len();
            let out = self.held[..cut].to_string();
            self.held.drain(..cut);
            StopOutcome::Continue(out)
        }
    }

    /// At the end of generation: the held-back text (it did not become a stop string).
    pub fn flush(&mut self) -> String {
        let out = self.held.get(self.emitted..).unwrap_or("").to_string();
        self.held.clear();
        self.emitted = 0;
        out
    }

    fn longest_stop(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }

    /// Longest suffix of the held text that is a proper prefix of some stop string.
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
                StopOutcome::Stopped { text, .. } => {
                    out.push_str(&text);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_string_split_over_pieces_never_leaks() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()], false);
        let mut emitted = Vec::new();
        for p in ["Hello", " world", "\n", "\nUs", "er", ": more"] {
            match m.push(p) {
                StopOutcome::Continue(t) => emitted.push(t),
                StopOutcome::Stopped { text, stop } => {
                    assert_eq!(stop, 0);
                    emitted.push(text);
                    break;
                }
            }
        }
        assert_eq!(emitted, ["Hello", " world", "", "", "", ""]);
        assert_eq!(emitted.concat(), "Hello world");
    }

    #[test]
    fn included_stop_strings_end_the_text_after_them() {
        let pieces = ["Hello", " world", "\n", "\nUs", "er", ": more"];
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()], true);
        assert_eq!(feed(&mut m, &pieces), ("Hello world\n\nUser:".into(), true));
        // Nothing is held back: each piece comes out as it arrives.
        let mut m = StopMatcher::new(vec!["STOP".into()], true);
        assert_eq!(m.push("abc ST"), StopOutcome::Continue("abc ST".into()));
        assert_eq!(
            m.push("OP! x"),
            StopOutcome::Stopped {
                text: "OP".into(),
                stop: 0
            }
        );
        let mut m = StopMatcher::new(vec!["é!".into()], true);
        assert_eq!(feed(&mut m, &["aé", "é", "b"]), ("aééb".into(), false));
    }

    #[test]
    fn partial_match_that_fails_is_released() {
        let mut m = StopMatcher::new(vec!["STOP".into()], false);
        assert_eq!(m.push("abc ST"), StopOutcome::Continue("abc ".into()));
        assert_eq!(
            m.push("OP!"),
            StopOutcome::Stopped {
                text: "".into(),
                stop: 0
            }
        );
        let mut m = StopMatcher::new(vec!["STOP".into()], false);
        assert_eq!(feed(&mut m, &["abc ST", "ay"]), ("abc STay".into(), false));
        let mut m = StopMatcher::new(vec!["STOP".into()], false);
        assert_eq!(feed(&mut m, &["x S", "T"]), ("x ST".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins_then_the_longest() {
        let mut m = StopMatcher::new(vec!["world".into(), "o".into()], false);
        assert_eq!(feed(&mut m, &["hello world"]), ("hell".into(), true));
        let mut m = StopMatcher::new(vec!["bc".into(), "abcd".into()], false);
        assert_eq!(feed(&mut m, &["xab", "cd"]), ("x".into(), true));
        let mut m = StopMatcher::new(vec!["ab".into(), "abc".into(), String::new()], true);
        assert_eq!(
            m.push("xabc"),
            StopOutcome::Stopped {
                text: "xabc".into(),
                stop: 1
            }
        );
    }

    #[test]
    fn no_stops_passes_through_and_multibyte_is_kept_whole() {
        let mut m = StopMatcher::new(vec![], false);
        assert_eq!(feed(&mut m, &["a", "é"]), ("aé".into(), false));
        // A stop string starting with a multi-byte char: hold-back respects char boundaries.
        let mut m = StopMatcher::new(vec!["🙏!".into()], false);
        assert_eq!(m.push("ok 🙏"), StopOutcome::Continue("ok ".into()));
        assert_eq!(m.push("?"), StopOutcome::Continue("🙏?".into()));
        assert!(matches!(m.push("🙏!"), StopOutcome::Stopped { .. }));
    }

    #[test]
    fn consecutive_special_tokens_without_spaces() {
        // WordPiece's decoder joins tokens with spaces, as some slow tokenizers do.
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [
                {"id": 0, "content": "[A]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "[B]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
            "model": {"type": "WordLevel", "vocab": {"[A]": 0, "[B]": 1, "x": 2}, "unk_token": "x"}
        });
        let tok = Tokenizer::from_json(&json.to_string()).expect("toy tokenizer");
        let run = |skip, spaces| {
            let mut d = Detokenizer::new(skip, spaces);
            [2u32, 0, 1, 2]
                .iter()
                .map(|&id| d.push(&tok, id).expect("decode"))
                .collect::<String>()
        };
        assert_eq!(run(false, true), "x [A] [B] x");
        assert_eq!(run(false, false), "x [A][B] x");
        assert_eq!(
            run(true, false),
            "x x",
            "skipped specials: the option does nothing"
        );
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
        let mut d = Detokenizer::new(true, true);
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
