//! Masking: once a step is given a secret, the value — and the forms a tool is likely to
//! print it in: base64, base64url and URL encoding — becomes `***` in every line of the
//! run's output before the line is stored or streamed. Output is captured line by line,
//! so a value written in two pieces (two `write`s, a pause between) is masked once the
//! line is whole. A multi-line value is masked line by line.
//!
//! Beyond the whole value:
//! - a line is also matched with its terminal escape sequences and other control
//!   characters removed, so colour codes inside a printed value do not hide it (such a
//!   line is stored without its escapes);
//! - each half of a value of 16 to 256 characters is a pattern too, so a value split in
//!   two (half on stdout, half on stderr, or on two lines) is masked in both places;
//! - base64 wrapped at 64 or 76 columns (`base64`, PEM, MIME) is matched across the
//!   line break: such a line is held until the next one arrives ([`Wrapped`]).
//!
//! What it cannot do (see docs/security.md): a step that transforms a value in a way
//! not listed here (reversed, hashed, split into small pieces, encrypted) prints it
//! unmasked. Masking keeps honest mistakes out of logs; it is no boundary against a
//! pipeline written to leak.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::RwLock;

/// What a masked value becomes.
pub const MASK: &str = "***";

/// The values to hide in one run's output. Cheap to share; values are added as steps
/// receive them.
#[derive(Default)]
pub struct Masker {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    patterns: BTreeSet<String>,
    matcher: Option<AhoCorasick>,
}

impl Masker {
    /// Hides `value` and its encodings from now on.
    pub fn add(&self, value: &str) {
        let forms = forms(value);
        let mut inner = self.inner.write().expect("masker lock");
        let before = inner.patterns.len();
        inner.patterns.extend(forms);
        if inner.patterns.len() != before {
            inner.matcher = Some(
                AhoCorasick::builder()
                    // Every match, overlapping ones too: the masked bytes are their union.
                    .match_kind(MatchKind::Standard)
                    .build(&inner.patterns)
                    .expect("literal patterns always build"),
            );
        }
    }

    /// Whether any value is to be masked yet.
    pub fn active(&self) -> bool {
        self.inner.read().expect("masker lock").matcher.is_some()
    }

    /// Byte ranges of `text` that give a known value away (overlapping ones included).
    fn matches(&self, text: &str) -> Vec<Range<usize>> {
        let inner = self.inner.read().expect("masker lock");
        match &inner.matcher {
            Some(matcher) => matcher
                .find_overlapping_iter(text)
                .map(|m| m.range())
                .collect(),
            None => Vec::new(),
        }
    }

    /// `text` with every known value replaced by `***`.
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.mask_with(text, Vec::new())
    }

    /// `text` with every known value, and `extra` ranges, replaced by `***`. A line with
    /// control characters is matched without them too; if that finds a value, the line
    /// comes back without them.
    fn mask_with<'a>(&self, text: &'a str, mut extra: Vec<Range<usize>>) -> Cow<'a, str> {
        if !self.active() {
            return Cow::Borrowed(text);
        }
        if text.contains(is_control) {
            let plain = strip_controls(text);
            let found = self.matches(&plain);
            if !found.is_empty() {
                return Cow::Owned(render(&plain, found));
            }
        }
        extra.extend(self.matches(text));
        if extra.is_empty() {
            Cow::Borrowed(text)
        } else {
            Cow::Owned(render(text, extra))
        }
    }
}

/// A control character a terminal acts on instead of showing (tab aside).
fn is_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// `text` without ANSI escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL or ESC \`,
/// two-character `ESC x`) and without other control characters.
fn strip_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            if !is_control(c) {
                out.push(c);
            }
            continue;
        }
        match chars.next() {
            Some('[') => {
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// `text` with the union of `ranges` replaced: each run of masked bytes becomes `***`.
fn render(text: &str, mut ranges: Vec<Range<usize>>) -> String {
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start < last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for r in merged {
        out.push_str(&text[at..r.start]);
        out.push_str(MASK);
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}

/// A line of wrapped base64 waiting for the next, per output stream: a value's base64
/// that crosses the line break is masked on both sides.
#[derive(Default)]
pub struct Wrapped {
    held: std::sync::Mutex<std::collections::HashMap<StreamKey, Held>>,
}

/// (step, whether stderr).
type StreamKey = (String, bool);

/// A held line and the ranges of it already known to be masked.
type Held = (String, Vec<Range<usize>>);

/// Lines of this many base64 characters are what `base64` (76), PEM and MIME (64) write.
fn looks_wrapped(text: &str) -> bool {
    matches!(text.len(), 64 | 76)
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
}

impl Wrapped {
    /// Masks `text` (from `step`'s stderr when `stderr`, else its stdout) and passes on
    /// the lines now ready, in order, to `emit`: none while a wrapped line is held, or
    /// the held line and then this one. Without any value to mask it is `emit(text)`.
    pub fn line(
        &self,
        masker: &Masker,
        step: &str,
        stderr: bool,
        text: &str,
        mut emit: impl FnMut(&str),
    ) {
        if !masker.active() {
            return emit(text);
        }
        let mut held = self.held.lock().expect("wrapped lock");
        let mut carried = Vec::new();
        if !held.is_empty()
            && let Some((previous, mut ranges)) = held.remove(&(step.to_string(), stderr))
        {
            let joined = format!("{previous}{text}");
            let cut = previous.len();
            for r in masker.matches(&joined) {
                if r.start < cut {
                    ranges.push(r.start..r.end.min(cut));
                }
                if r.end > cut {
                    carried.push(r.start.max(cut) - cut..r.end - cut);
                }
            }
            emit(&masker.mask_with(&previous, ranges));
        }
        if looks_wrapped(text) {
            held.insert((step.to_string(), stderr), (text.to_string(), carried));
        } else {
            emit(&masker.mask_with(text, carried));
        }
    }

    /// The lines still held for `step` (every step when `None`), masked.
    pub fn flush(&self, masker: &Masker, step: Option<&str>) -> Vec<(String, bool, String)> {
        let mut held = self.held.lock().expect("wrapped lock");
        let keys: Vec<(String, bool)> = held
            .keys()
            .filter(|(s, _)| step.is_none_or(|step| s == step))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|key| {
                let (text, ranges) = held.remove(&key)?;
                Some((key.0, key.1, masker.mask_with(&text, ranges).into_owned()))
            })
            .collect()
    }
}

/// The strings that give `value` away: each of its lines, and its encodings.
fn forms(value: &str) -> BTreeSet<String> {
    let long_enough = |s: &str| s.chars().count() >= super::MIN_LEN;
    let mut forms = BTreeSet::new();
    for line in value.lines() {
        if long_enough(line) {
            forms.insert(line.to_string());
        }
        // Each half (and every run of that length), for a value printed in two pieces.
        let chars: Vec<char> = line.chars().collect();
        if (16..=256).contains(&chars.len()) {
            let half = chars.len() / 2;
            for window in chars.windows(half) {
                forms.insert(window.iter().collect());
            }
        }
    }
    let url_safe = base64::engine::general_purpose::URL_SAFE;
    for engine in [&base64::engine::general_purpose::STANDARD, &url_safe] {
        forms.extend(
            base64_cores(value.as_bytes(), engine)
                .into_iter()
                .filter(|s| long_enough(s)),
        );
    }
    // As encodeURIComponent writes it, and as HTML forms do (space as `+`).
    const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let encoded = percent_encoding::utf8_percent_encode(value, COMPONENT).to_string();
    if encoded != value {
        forms.insert(encoded.replace("%20", "+"));
        forms.insert(encoded);
    }
    forms
}

/// The part of `bytes`' base64 that is the same wherever `bytes` sits in a longer input:
/// for each of the three alignments, the characters made only of `bytes`' own bits.
fn base64_cores(bytes: &[u8], engine: &impl Engine) -> Vec<String> {
    (0..3)
        .map(|offset| {
            let mut input = vec![0u8; offset];
            input.extend_from_slice(bytes);
            let encoded = engine.encode(&input);
            let start = (8 * offset).div_ceil(6);
            let end = 8 * (offset + bytes.len()) / 6;
            encoded[start..end.max(start)].to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    fn masker(values: &[&str]) -> Masker {
        let m = Masker::default();
        for v in values {
            m.add(v);
        }
        m
    }

    #[test]
    fn plain_values_are_masked_wherever_they_appear() {
        let m = masker(&["hunter2-secret"]);
        assert_eq!(m.mask("token=hunter2-secret."), "token=***.");
        assert_eq!(m.mask("hunter2-secrethunter2-secret"), "******");
        assert_eq!(m.mask("nothing here"), "nothing here");
        assert!(matches!(m.mask("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn base64_forms_are_masked_at_every_alignment_and_ending() {
        let secret = "s3cr3t+value/with?symbols";
        let m = masker(&[secret]);
        for prefix in ["", "a", "ab", "abc"] {
            for suffix in ["", "\n", "x", "xyz"] {
                let input = format!("{prefix}{secret}{suffix}");
                for encoded in [
                    STANDARD.encode(input.as_bytes()),
                    URL_SAFE_NO_PAD.encode(input.as_bytes()),
                ] {
                    let masked = m.mask(&encoded).into_owned();
                    assert!(masked.contains(MASK), "{encoded} → {masked}");
                    // What is left is the prefix's and suffix's own characters, plus at
                    // most the two characters that mix their bits with the secret's.
                    let left = masked.replace(MASK, "").trim_end_matches('=').len();
                    let own = (prefix.len() + suffix.len()) * 4 / 3 + 4;
                    assert!(left <= own, "{encoded} → {masked}");
                }
            }
        }
    }

    #[test]
    fn escapes_inside_a_value_do_not_hide_it() {
        let secret = "tok-0123456789abcdefXYZ";
        let m = masker(&[secret]);
        let coloured = format!(
            "\x1b[1mtoken\x1b[0m: {}\x1b[0m{}",
            &secret[..12],
            &secret[12..]
        );
        assert_eq!(m.mask(&coloured), "token: ***");
        // Colours stay when nothing is hidden.
        assert_eq!(m.mask("\x1b[32mok\x1b[0m"), "\x1b[32mok\x1b[0m");
        let osc = format!("\x1b]0;title\x07{}", secret);
        assert_eq!(m.mask(&osc), "***");
    }

    #[test]
    fn a_value_printed_in_two_halves_is_masked_in_both() {
        let secret = "0123456789abcdefghijklmnopqrstuv";
        let m = masker(&[secret]);
        assert_eq!(m.mask(&secret[..16]), "***");
        assert_eq!(m.mask(&format!("[{}]", &secret[16..])), "[***]");
        assert_eq!(m.mask("0123456789abcde"), "0123456789abcde");
    }

    #[test]
    fn wrapped_base64_is_masked_across_the_line_break() {
        let secret = "wrapped-secret-value-0123456789";
        let m = masker(&[secret]);
        let wrapped = Wrapped::default();
        let encoded = STANDARD.encode(format!("{secret}{secret}{secret}"));
        let mut lines = Vec::new();
        for chunk in encoded.as_bytes().chunks(76) {
            let chunk = std::str::from_utf8(chunk).unwrap();
            wrapped.line(&m, "s", false, chunk, |l| lines.push(l.to_string()));
        }
        lines.extend(wrapped.flush(&m, Some("s")).into_iter().map(|(_, _, l)| l));
        assert_eq!(lines.len(), 2, "{lines:?}");
        for (line, chunk) in lines.iter().zip(encoded.as_bytes().chunks(76)) {
            let left = line.replace(MASK, "").len();
            assert!(
                left <= 4,
                "{line} from {}",
                std::str::from_utf8(chunk).unwrap()
            );
        }
        // Ordinary lines pass at once.
        let mut passed = Vec::new();
        wrapped.line(&m, "s", false, "hello", |l| passed.push(l.to_string()));
        assert_eq!(passed, ["hello"]);
    }

    #[test]
    fn url_encoded_and_multi_line_values_are_masked() {
        let m = masker(&["p@ss w/rd+x", "line-one\nline-two\nab"]);
        assert_eq!(m.mask("u=p%40ss%20w%2Frd%2Bx&v=1"), "u=***&v=1");
        assert_eq!(m.mask("u=p%40ss+w%2Frd%2Bx"), "u=***");
        assert_eq!(m.mask("> line-two"), "> ***");
        // Lines too short to mask on their own stay.
        assert_eq!(m.mask("ab"), "ab");
    }
}
