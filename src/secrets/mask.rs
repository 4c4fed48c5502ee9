//! Masking: once a step is given a secret, the value — and the forms a tool is likely to
//! print it in: base64, base64url and URL encoding — becomes `***` in every line of the
//! run's output before the line is stored or streamed. Output is captured line by line,
//! so a value written in two pieces (two `write`s, a pause between) is masked once the
//! line is whole. A multi-line value is masked line by line.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use std::borrow::Cow;
use std::collections::BTreeSet;
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
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&inner.patterns)
                    .expect("literal patterns always build"),
            );
        }
    }

    /// `text` with every known value replaced by `***`.
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let inner = self.inner.read().expect("masker lock");
        match &inner.matcher {
            Some(matcher) if matcher.is_match(text) => {
                let mut out = String::with_capacity(text.len());
                matcher.replace_all_with(text, &mut out, |_, _, out| {
                    out.push_str(MASK);
                    true
                });
                Cow::Owned(out)
            }
            _ => Cow::Borrowed(text),
        }
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
    fn url_encoded_and_multi_line_values_are_masked() {
        let m = masker(&["p@ss w/rd+x", "line-one\nline-two\nab"]);
        assert_eq!(m.mask("u=p%40ss%20w%2Frd%2Bx&v=1"), "u=***&v=1");
        assert_eq!(m.mask("u=p%40ss+w%2Frd%2Bx"), "u=***");
        assert_eq!(m.mask("> line-two"), "> ***");
        // Lines too short to mask on their own stay.
        assert_eq!(m.mask("ab"), "ab");
    }
}
