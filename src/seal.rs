//! Sealing: how BetCycle keeps a secret it must be able to read again (a webhook secret, a
//! forge token) without storing it in plaintext. Envelope encryption: each value gets its
//! own random data key; the value is encrypted with that key (XChaCha20-Poly1305), and the
//! data key is encrypted with the instance's master key. Both encryptions bind a context
//! string (e.g. `project:3/webhook_secret`), so a sealed value copied to another place
//! does not open there.
//!
//! The master key is 32 random bytes in `<data-dir>/master.key` (mode 0600), created on
//! first start. Without it, sealed values cannot be opened: back it up with the database.

use crate::error::{Error, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A sealed value as stored: every field is hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The data key, encrypted with the master key.
    pub key: String,
    pub key_nonce: String,
    /// The value, encrypted with the data key.
    pub value: String,
    pub value_nonce: String,
}

/// The instance's master key.
#[derive(Clone)]
pub struct MasterKey(chacha20poly1305::Key);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

pub const MASTER_KEY_FILE: &str = "master.key";

fn random<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random source is available");
    buf
}

fn encrypt(key: &chacha20poly1305::Key, plain: &[u8], context: &str) -> (String, String) {
    let nonce = random::<24>();
    let cipher = XChaCha20Poly1305::new(key);
    let sealed = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plain,
                aad: context.as_bytes(),
            },
        )
        .expect("encryption of an in-memory buffer cannot fail");
    (hex::encode(sealed), hex::encode(nonce))
}

fn decrypt(
    key: &chacha20poly1305::Key,
    sealed: &str,
    nonce: &str,
    context: &str,
) -> Result<Vec<u8>> {
    let broken = || {
        Error::Invalid(format!(
            "the sealed value for {context} cannot be opened with this master key"
        ))
    };
    let sealed = hex::decode(sealed).map_err(|_| broken())?;
    let nonce: [u8; 24] = hex::decode(nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(broken)?;
    XChaCha20Poly1305::new(key)
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &sealed,
                aad: context.as_bytes(),
            },
        )
        .map_err(|_| broken())
}

impl MasterKey {
    /// Reads `<data_dir>/master.key`, creating it (0600) when absent.
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(MASTER_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes: [u8; 32] = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "{} is not a master key (64 hex digits expected)",
                            path.display()
                        ))
                    })?;
                Ok(Self(bytes.into()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let bytes = random::<32>();
                let partial = path.with_extension("partial");
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&partial)
                    .map_err(Error::io(format!("cannot create {}", partial.display())))?;
                file.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(Error::io(format!("cannot write {}", partial.display())))?;
                std::fs::rename(&partial, &path)
                    .map_err(Error::io(format!("cannot create {}", path.display())))?;
                tracing::info!(path = %path.display(), "created the master key; back it up with the database");
                Ok(Self(bytes.into()))
            }
            Err(e) => Err(Error::Io {
                context: format!("cannot read {}", path.display()),
                source: e,
            }),
        }
    }

    /// Seals `plain` for `context` under a fresh data key.
    pub fn seal(&self, plain: &str, context: &str) -> Sealed {
        let data_key = chacha20poly1305::Key::from(random::<32>());
        let (value, value_nonce) = encrypt(&data_key, plain.as_bytes(), context);
        let (key, key_nonce) = encrypt(&self.0, &data_key, context);
        Sealed {
            key,
            key_nonce,
            value,
            value_nonce,
        }
    }

    /// Opens a value sealed for `context`.
    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<String> {
        let data_key: [u8; 32] = decrypt(&self.0, &sealed.key, &sealed.key_nonce, context)?
            .try_into()
            .map_err(|_| {
                Error::Invalid(format!("the sealed data key for {context} is malformed"))
            })?;
        let plain = decrypt(
            &data_key.into(),
            &sealed.value,
            &sealed.value_nonce,
            context,
        )?;
        String::from_utf8(plain)
            .map_err(|_| Error::Invalid(format!("the sealed value for {context} is not text")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::load_or_create(dir.path()).unwrap();
        let sealed = key.seal("hunter2", "project:1/webhook_secret");
        assert!(!serde_json::to_string(&sealed).unwrap().contains("hunter2"));
        assert_eq!(
            key.open(&sealed, "project:1/webhook_secret").unwrap(),
            "hunter2"
        );
        // Moved to another project: refused.
        assert!(key.open(&sealed, "project:2/webhook_secret").is_err());
        // The same file gives the same key; another key cannot open it.
        let again = MasterKey::load_or_create(dir.path()).unwrap();
        assert_eq!(
            again.open(&sealed, "project:1/webhook_secret").unwrap(),
            "hunter2"
        );
        let other = MasterKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.open(&sealed, "project:1/webhook_secret").is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
