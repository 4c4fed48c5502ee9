//! Sealing: how BetCycle keeps a value it must be able to read again (a secret) without
//! storing it in plaintext. Envelope encryption: each value gets its own random data key;
//! the value is encrypted with that key (XChaCha20-Poly1305), and the data key is
//! encrypted with the instance's master key. Both encryptions bind a context string (e.g.
//! `secret:project:3/DATABASE_URL@2`), so a sealed value copied to another place does not
//! open there. Rotating the master key re-encrypts only the data keys.
//!
//! The master key is 32 random bytes, hex, in a file (mode 0600): `<data-dir>/master.key`
//! unless `master_key_file` names another. Without it, sealed values cannot be opened:
//! back it up with the database. [`crate::secrets::open_master_key`] decides when a key
//! file may be created and checks that a key is the right one.

use crate::core::error::{Error, Result};
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

/// The key file's name in the data directory, unless `master_key_file` names another.
pub const MASTER_KEY_FILE: &str = "master.key";

/// What the key check seals, and where.
const KEY_CHECK_TEXT: &str = "betcycle master key check";
pub const KEY_CHECK_CONTEXT: &str = "master-key-check";

/// Makes a rename in `path`'s directory durable.
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

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
    /// A new random key.
    pub fn generate() -> Self {
        Self(random::<32>().into())
    }

    /// Reads a key file (64 hex digits); `None` when the file does not exist.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        match std::fs::read_to_string(path) {
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
                Ok(Some(Self(bytes.into())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                context: format!("cannot read {}", path.display()),
                source: e,
            }),
        }
    }

    /// Writes the key to `path` (mode 0600) atomically: a crash leaves either no file or
    /// the whole key.
    pub fn write(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let partial = path.with_extension("partial");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(Error::io(format!("cannot create {}", partial.display())))?;
        file.write_all(self.file_contents().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(Error::io(format!("cannot write {}", partial.display())))?;
        std::fs::rename(&partial, path)
            .map_err(Error::io(format!("cannot create {}", path.display())))?;
        sync_parent(path);
        Ok(())
    }

    /// The key file's text: 64 hex digits and a newline.
    pub fn file_contents(&self) -> String {
        format!("{}\n", hex::encode(self.0))
    }

    /// A short public fingerprint (the first 12 hex digits of the key's SHA-256), so
    /// messages can say which key is which without revealing either.
    pub fn id(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(self.0))[..12].to_string()
    }

    /// A value sealed under this key that proves, later, that a key is this one.
    pub fn check_value(&self) -> Sealed {
        self.seal(KEY_CHECK_TEXT, KEY_CHECK_CONTEXT)
    }

    /// Whether `check` (from [`MasterKey::check_value`]) was sealed under this key.
    pub fn verifies(&self, check: &Sealed) -> bool {
        self.open(check, KEY_CHECK_CONTEXT)
            .is_ok_and(|t| t == KEY_CHECK_TEXT)
    }

    /// The same value sealed under `to` instead: only the data key is re-encrypted; the
    /// value's ciphertext stays as it is.
    pub fn rewrap(&self, sealed: &Sealed, context: &str, to: &MasterKey) -> Result<Sealed> {
        let data_key = decrypt(&self.0, &sealed.key, &sealed.key_nonce, context)?;
        let (key, key_nonce) = encrypt(&to.0, &data_key, context);
        Ok(Sealed {
            key,
            key_nonce,
            value: sealed.value.clone(),
            value_nonce: sealed.value_nonce.clone(),
        })
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
        let path = dir.path().join(MASTER_KEY_FILE);
        assert!(MasterKey::read(&path).unwrap().is_none());
        let key = MasterKey::generate();
        key.write(&path).unwrap();
        let sealed = key.seal("hunter2", "project:1/WEBHOOK_SECRET");
        assert!(!serde_json::to_string(&sealed).unwrap().contains("hunter2"));
        assert_eq!(
            key.open(&sealed, "project:1/WEBHOOK_SECRET").unwrap(),
            "hunter2"
        );
        // Moved to another project: refused.
        assert!(key.open(&sealed, "project:2/WEBHOOK_SECRET").is_err());
        // The same file gives the same key; another key cannot open it.
        let again = MasterKey::read(&path).unwrap().unwrap();
        assert_eq!(again.id(), key.id());
        assert_eq!(
            again.open(&sealed, "project:1/WEBHOOK_SECRET").unwrap(),
            "hunter2"
        );
        let other = MasterKey::generate();
        assert_ne!(other.id(), key.id());
        assert!(other.open(&sealed, "project:1/WEBHOOK_SECRET").is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "not a key").unwrap();
        assert!(MasterKey::read(&path).is_err());
    }

    #[test]
    fn rewrapping_moves_a_value_to_another_key_without_touching_its_ciphertext() {
        let (old, new) = (MasterKey::generate(), MasterKey::generate());
        let sealed = old.seal("s3cret-value", "secret:instance/A@1");
        let moved = old.rewrap(&sealed, "secret:instance/A@1", &new).unwrap();
        assert_eq!(moved.value, sealed.value);
        assert_eq!(
            new.open(&moved, "secret:instance/A@1").unwrap(),
            "s3cret-value"
        );
        assert!(old.open(&moved, "secret:instance/A@1").is_err());
        assert!(old.rewrap(&sealed, "secret:instance/B@1", &new).is_err());
        let check = old.check_value();
        assert!(old.verifies(&check));
        assert!(!new.verifies(&check));
    }
}
