//! Email notifications over SMTP (lettre). The channel's URL says where and how:
//!
//! - `smtp://[user:password@]host[:port]` — STARTTLS, required (port 587 unless given);
//! - `smtp://…?tls=opportunistic` — STARTTLS when the server offers it;
//! - `smtp://…?tls=none` — plain text (a relay on this host);
//! - `smtps://[user:password@]host[:port]` — TLS from the first byte (port 465).
//!
//! A password in the URL makes it a credential: keep such a URL in an instance secret
//! (`url_secret`). Certificates are checked like every outbound call's: the system's roots
//! plus the Mozilla roots this binary carries.

use super::state_label;
use crate::monitoring::{Channel, Notification};
use lettre::message::{Mailbox, Message, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::time::Duration;

/// How long one SMTP conversation may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What is wrong with an email channel's URL, if anything.
pub fn check_url(url: &str) -> Result<(), String> {
    parse(url).map(|_| ())
}

/// The server's host name and a transport builder for `url`.
fn parse(
    url: &str,
) -> Result<(String, lettre::transport::smtp::AsyncSmtpTransportBuilder), String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err("expected smtp://host or smtps://host".into()),
    };
    let mut mode = None;
    for (key, value) in parsed.query_pairs() {
        match key.as_ref() {
            "tls" => mode = Some(value.into_owned()),
            other => {
                return Err(format!(
                    "unknown parameter \"{other}\": the one parameter is tls (required, opportunistic or none)"
                ));
            }
        }
    }
    crate::http::tls::install_crypto_provider();
    let params = || -> Result<TlsParameters, String> {
        let mut builder = TlsParameters::builder(host.clone());
        for der in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
            if let Ok(cert) = Certificate::from_der(der.to_vec()) {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder.build_rustls().map_err(|e| e.to_string())
    };
    let (tls, port) = match (parsed.scheme(), mode.as_deref()) {
        ("smtps", None) => (Tls::Wrapper(params()?), 465),
        ("smtps", Some(m)) => {
            return Err(format!(
                "tls={m} is for smtp:// URLs; smtps:// is TLS from the start"
            ));
        }
        ("smtp", None | Some("required")) => (Tls::Required(params()?), 587),
        ("smtp", Some("opportunistic")) => (Tls::Opportunistic(params()?), 587),
        ("smtp", Some("none")) => (Tls::None, 587),
        ("smtp", Some(m)) => {
            return Err(format!(
                "tls={m}: use required (the default), opportunistic or none"
            ));
        }
        (scheme, _) => {
            return Err(format!(
                "scheme {scheme}: expected smtp:// (STARTTLS) or smtps:// (TLS)"
            ));
        }
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
        .port(parsed.port().unwrap_or(port))
        .tls(tls)
        .timeout(Some(TIMEOUT));
    if !parsed.username().is_empty() {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| "the user name or password is not UTF-8".to_string())
        };
        builder = builder.credentials(Credentials::new(
            decode(parsed.username())?,
            decode(parsed.password().unwrap_or(""))?,
        ));
    }
    Ok((host, builder))
}

/// An address of `field` (to, from), or what is wrong with it.
fn mailbox(field: &str, text: &str) -> Result<Mailbox, String> {
    text.parse::<Mailbox>().map_err(|e| {
        format!("{field} \"{text}\": not an email address such as ops@example.com or Ops <ops@example.com> ({e})")
    })
}

/// Checks an email channel's recipients and sender.
pub fn check_addresses(channel: &Channel) -> Result<(), String> {
    if channel.to.is_empty() {
        return Err("an email channel needs to (one or more addresses)".into());
    }
    for to in &channel.to {
        mailbox("to", to)?;
    }
    if let Some(from) = &channel.from {
        mailbox("from", from)?;
    }
    Ok(())
}

/// The subject line of `n`: `[BetCycle] FIRING: …`.
pub fn subject(n: &Notification) -> String {
    let (label, _) = state_label(n.state);
    let summary: String = n.summary.chars().take(150).collect();
    format!("[BetCycle] {label}: {summary}")
}

/// Sends `n` to the channel's recipients through the SMTP server at `url`.
pub async fn send(url: &str, channel: &Channel, n: &Notification) -> Result<(), String> {
    let (host, builder) = parse(url)?;
    let from = match &channel.from {
        Some(from) => from.clone(),
        None => format!("BetCycle <betcycle@{host}>"),
    };
    let mut message = Message::builder()
        .from(mailbox("from", &from)?)
        .subject(subject(n))
        .header(ContentType::TEXT_PLAIN);
    for to in &channel.to {
        message = message.to(mailbox("to", to)?);
    }
    let (label, _) = state_label(n.state);
    let body = format!(
        "{label}: {}\n\nDetails: {}\nAlert: {}\nSeverity: {}\nAt: {}\n\n-- \nBetCycle, notification {} to channel {}\n",
        n.summary, n.link, n.alert, n.severity, n.created_at, n.id, n.channel
    );
    let message = message.body(body).map_err(|e| e.to_string())?;
    builder
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| crate::core::outbound::describe(&e))
}
