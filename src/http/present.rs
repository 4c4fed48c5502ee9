//! Presentation shared by the API and the console.

use jiff::Timestamp;
use std::borrow::Borrow;

/// A log line as HTML: escaped, with ANSI colours as styled spans.
pub fn log_html(text: &str) -> String {
    if !text.contains('\x1b') {
        // Most lines carry no colour: escaping is all there is to do.
        return ansi_to_html::Esc(text).to_string();
    }
    ansi_to_html::convert(text).unwrap_or_else(|_| ansi_to_html::Esc(text).to_string())
}

/// The colour family of a run, step or deployment status, one palette everywhere (the
/// CSS classes `tone-…`; docs/console.md lists it): waiting is neutral, running blue,
/// succeeded green, failed red, allowed failures and rollbacks amber, skipped grey,
/// cancelled dark grey.
pub fn tone(status: &str) -> &'static str {
    match status {
        "running" | "deploying" | "verifying" => "running",
        "succeeded" => "ok",
        "failed" | "timed out" | "error" | "rejected" => "bad",
        "failed (allowed)" | "rolled_back" | "awaiting_approval" => "warn",
        "skipped" => "skip",
        "cancelled" => "cancel",
        // queued, pending and anything new: waiting.
        _ => "neutral",
    }
}

/// "just now", "5 min ago", "3 h ago", "2 days ago": how long ago `at` was, as a list
/// shows it (the absolute time goes in the tooltip, `utc`).
pub fn ago(at: impl Borrow<Timestamp>) -> String {
    let at = *at.borrow();
    let secs = (Timestamp::now().as_second() - at.as_second()).max(0);
    match secs {
        0..45 => "just now".into(),
        45..3600 => format!("{} min ago", (secs + 30) / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        86_400..172_800 => "yesterday".into(),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// An absolute time as the console shows it everywhere: UTC, to the second.
pub fn utc(at: impl Borrow<Timestamp>) -> String {
    at.borrow().strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `ms` since a step started as a log's timestamp column shows it: `+1:02.345`.
pub fn offset(ms: u64) -> String {
    format!("+{}:{:02}.{:03}", ms / 60_000, ms / 1000 % 60, ms % 1000)
}

/// A stored log line's text as plain text: ANSI escapes (colours, cursor moves) removed.
pub fn log_text(text: &str) -> String {
    if !text.contains('\x1b') {
        return text.to_string();
    }
    String::from_utf8_lossy(&strip_ansi_escapes::strip(text)).into_owned()
}

/// A service instance's limits for its row: `12.3 MiB of 64 MiB · 0.5 CPU`, `—` without.
pub fn limits(used: &Option<u64>, memory: &Option<u64>, cpus: &Option<f64>) -> String {
    use crate::core::config::format_size as size;
    let mut parts = Vec::new();
    if let Some(limit) = memory {
        parts.push(match used {
            Some(used) => format!("{} of {}", size(*used), size(*limit)),
            None => format!("memory {}", size(*limit)),
        });
    }
    if let Some(cpus) = cpus {
        parts.push(format!("{cpus} CPU"));
    }
    if parts.is_empty() {
        "—".into()
    } else {
        parts.join(" · ")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_status_has_its_tone() {
        use super::tone;
        assert_eq!(tone("queued"), "neutral");
        assert_eq!(tone("pending"), "neutral");
        assert_eq!(tone("running"), "running");
        assert_eq!(tone("succeeded"), "ok");
        assert_eq!(tone("failed"), "bad");
        assert_eq!(tone("timed out"), "bad");
        assert_eq!(tone("error"), "bad");
        assert_eq!(tone("failed (allowed)"), "warn");
        assert_eq!(tone("skipped"), "skip");
        assert_eq!(tone("cancelled"), "cancel");
        assert_eq!(tone("rolled_back"), "warn");
    }

    #[test]
    fn log_text_drops_colours_and_keeps_the_words() {
        assert_eq!(super::log_text("\x1b[32mok\x1b[0m done"), "ok done");
        assert_eq!(super::log_text("plain <b>"), "plain <b>");
    }

    #[test]
    fn offsets_read_as_minutes_seconds_and_milliseconds() {
        assert_eq!(super::offset(0), "+0:00.000");
        assert_eq!(super::offset(62_345), "+1:02.345");
    }
}
