//! Who is asking: API keys (stored as SHA-256 hashes) resolve to a [`Principal`].
//!
//! Every stream is bound to the principal that created it; another principal is told the
//! stream does not exist (404, never 403), so ids cannot be probed. With no keys
//! configured, every request is the principal `anonymous` — and `serve` then refuses a
//! non-loopback address unless told `--allow-unauthenticated`.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, parse_sha256};

/// The owner of streams: a configured key's principal name, or `anonymous`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(pub Arc<str>);

impl Principal {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The key table.
#[derive(Debug, Default)]
pub struct Keys {
    by_hash: HashMap<[u8; 32], Principal>,
}

impl Keys {
    /// Build the table from the config (and its keys file).
    ///
    /// # Errors
    /// A message naming the file and line that is wrong.
    pub fn load(config: &AuthConfig) -> Result<Self, String> {
        let mut by_hash = HashMap::new();
        for key in &config.keys {
            let hash = parse_sha256(&key.sha256)
                .ok_or_else(|| format!("auth.keys: bad sha256 for {}", key.principal))?;
            by_hash.insert(hash, Principal(key.principal.as_str().into()));
        }
        if let Some(path) = &config.keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("auth.keys_file {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let parsed = line
                    .split_once(char::is_whitespace)
                    .and_then(|(p, h)| Some((p, parse_sha256(h.trim())?)));
                let Some((principal, hash)) = parsed else {
                    return Err(format!(
                        "auth.keys_file {} line {}: expected 'principal sha256hex'",
                        path.display(),
                        n + 1
                    ));
                };
                by_hash.insert(hash, Principal(principal.into()));
            }
        }
        Ok(Self { by_hash })
    }

    /// Whether any key is configured (auth is on).
    pub fn enabled(&self) -> bool {
        !self.by_hash.is_empty()
    }

    /// The principal for a presented key.
    pub fn principal(&self, key: &str) -> Option<&Principal> {
        self.by_hash.get(&sha256(key.as_bytes()))
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKeyConfig;

    #[test]
    fn keys_resolve_by_hash() {
        let hash: String = sha256(b"secret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let keys = Keys::load(&AuthConfig {
            keys: vec![ApiKeyConfig {
                principal: "alice".into(),
                sha256: hash.to_uppercase(),
            }],
            keys_file: None,
            admins: Vec::new(),
        })
        .unwrap();
        assert!(keys.enabled());
        assert_eq!(
            keys.principal("secret").map(Principal::as_str),
            Some("alice")
        );
        assert_eq!(keys.principal("Secret"), None);
    }

    #[test]
    fn a_keys_file_has_one_principal_and_hash_per_line() {
        let hex =
            |key: &[u8]| -> String { sha256(key).iter().map(|b| format!("{b:02x}")).collect() };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            format!(
                "# who  sha256\n\nalice {}\n  bob\t{}  \n",
                hex(b"a-key"),
                hex(b"b-key")
            ),
        )
        .unwrap();
        let keys = Keys::load(&AuthConfig {
            keys: Vec::new(),
            keys_file: Some(path.clone()),
            admins: Vec::new(),
        })
        .unwrap();
        assert_eq!(
            keys.principal("a-key").map(Principal::as_str),
            Some("alice")
        );
        assert_eq!(keys.principal("b-key").map(Principal::as_str), Some("bob"));
        assert_eq!(keys.principal("c-key"), None);

        std::fs::write(&path, format!("alice {}\nbob not-a-hash\n", hex(b"a-key"))).unwrap();
        let error = Keys::load(&AuthConfig {
            keys: Vec::new(),
            keys_file: Some(path),
            admins: Vec::new(),
        })
        .unwrap_err();
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn hex_parsing_is_strict() {
        assert!(parse_sha256(&"ab".repeat(32)).is_some());
        assert!(parse_sha256(&"ab".repeat(31)).is_none());
        assert!(parse_sha256(&"zz".repeat(32)).is_none());
        assert!(parse_sha256(&"é".repeat(32)).is_none());
    }
}
