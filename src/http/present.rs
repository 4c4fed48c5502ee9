//! Presentation shared by the API and the console.

/// A log line as HTML: escaped, with ANSI colours as styled spans.
pub fn log_html(text: &str) -> String {
    if !text.contains('\x1b') {
        // Most lines carry no colour: escaping is all there is to do.
        return ansi_to_html::Esc(text).to_string();
    }
    ansi_to_html::convert(text).unwrap_or_else(|_| ansi_to_html::Esc(text).to_string())
}
