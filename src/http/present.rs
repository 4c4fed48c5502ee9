//! Presentation shared by the API and the console.

/// A log line as HTML: escaped, with ANSI colours as styled spans.
pub fn log_html(text: &str) -> String {
    ansi_to_html::convert(text).unwrap_or_else(|_| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;")
    })
}
