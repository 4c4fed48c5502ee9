//! Outbound HTTP (webhook targets, approval webhooks, commit statuses, the CLI's API client,
//! self-update): one way to build a reqwest client. TLS is rustls; the Mozilla CA roots are
//! compiled in (`webpki-root-certs`) and merged with the system's, so HTTPS works where the
//! system has none — a `FROM scratch` container, a bare VM image.

/// A client builder with BetCycle's user agent and the bundled CA roots.
pub fn client_builder() -> reqwest::ClientBuilder {
    crate::http::tls::install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("BetCycle/", env!("CARGO_PKG_VERSION")))
        .tls_certs_merge(bundled_roots())
}

/// Whether `url` is one an outbound client can call: http(s) with a host. The error is
/// the reason, for the caller to put after what the URL was for.
pub fn check_http_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err("expected an http(s):// URL with a host".into());
    }
    Ok(())
}

/// The Mozilla root certificates this binary carries.
pub fn bundled_roots() -> Vec<reqwest::Certificate> {
    webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .collect()
}

/// An error with its causes, `outer: inner: innermost` — reqwest's own message ("error
/// sending request for url …") hides why (a refused connection, an unknown certificate).
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_roots_load_into_a_client() {
        assert!(super::bundled_roots().len() > 100);
        super::client_builder()
            .build()
            .expect("a client with the bundled roots");
    }
}
