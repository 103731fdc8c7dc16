//! Who is asking, and what they may do: API keys (stored as SHA-256 hashes) and JSON Web
//! Tokens ([`jwt`]) resolve to a [`Principal`] with its [`Scopes`].
//!
//! Scopes: `chat` (chat completions, sessions, reading one's chat streams), `subscribe`
//! (reading topics and tasks), `publish` (publishing to topics, creating and updating
//! tasks), `admin` (everyone's usage, any chat stream's cancel). API keys have all but
//! `admin` unless their `scopes` say otherwise; a token has its `scope` claim's (all but
//! `admin` when it has none).
//!
//! Every stream is bound to the principal that created it; another principal is told the
//! stream does not exist (404, never 403), so ids cannot be probed. With no keys
//! configured, every request is the principal `anonymous` — and `serve` then refuses a
//! non-loopback address unless told `--allow-unauthenticated`.

pub mod jwt;

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, parse_sha256};

/// One thing a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Chat completions, sessions, one's own chat streams.
    Chat,
    /// Reading topics and tasks.
    Subscribe,
    /// Publishing to topics; creating and updating tasks.
    Publish,
    /// Everyone's usage; cancelling any chat stream.
    Admin,
}

impl Scope {
    /// `chat`, `subscribe`, `publish` or `admin`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "chat" => Scope::Chat,
            "subscribe" => Scope::Subscribe,
            "publish" => Scope::Publish,
            "admin" => Scope::Admin,
            _ => return None,
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Chat => "chat",
            Scope::Subscribe => "subscribe",
            Scope::Publish => "publish",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope (the one principal of a gateway without auth).
    pub const ALL: Scopes = Scopes(0b1111);
    /// What a key or token has unless it says: all but `admin`.
    pub const DEFAULT: Scopes = Scopes(0b0111);

    /// The scopes named (unknown names are left out: a token may carry others').
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Scopes(
            names
                .into_iter()
                .filter_map(Scope::parse)
                .fold(0, |bits, scope| bits | scope.bit()),
        )
    }

    /// Whether `scope` is in the set.
    pub fn has(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }
}

/// The owner of streams — a key's principal, a token's `sub`, or `anonymous` without
/// auth — and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    name: Arc<str>,
    scopes: Scopes,
}

impl Principal {
    /// `name` with `scopes`.
    pub fn new(name: &str, scopes: Scopes) -> Self {
        Self {
            name: name.into(),
            scopes,
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Whether it has `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.has(scope)
    }

    /// Nothing if it has `scope`; 403 `insufficient_scope` naming it otherwise.
    ///
    /// # Errors
    /// The 403.
    pub fn require(&self, scope: Scope) -> Result<(), crate::error::ApiError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(crate::error::ApiError::forbidden(
                "insufficient_scope",
                format!("this needs the scope `{}`", scope.name()),
            ))
        }
    }
}

/// The key table.
#[derive(Debug, Default)]
pub struct Keys {
    by_hash: HashMap<[u8; 32], Principal>,
    /// `[auth.jwt]`, when tokens are accepted too.
    jwt: Option<jwt::Jwt>,
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
            let scopes = key.scopes.as_ref().map_or(Scopes::DEFAULT, |names| {
                Scopes::from_names(names.iter().map(String::as_str))
            });
            by_hash.insert(hash, Principal::new(&key.principal, scopes));
        }
        if let Some(path) = &config.keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("auth.keys_file {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut fields = line.split_whitespace();
                let parsed = (|| {
                    let principal = fields.next()?;
                    if principal.len() > 256 || principal.chars().any(char::is_control) {
                        return None;
                    }
                    let hash = parse_sha256(fields.next()?)?;
                    let scopes = match fields.next() {
                        None => Scopes::DEFAULT,
                        Some(names) => {
                            let names: Vec<&str> = names.split(',').collect();
                            if names.iter().any(|n| Scope::parse(n).is_none()) {
                                return None;
                            }
                            Scopes::from_names(names)
                        }
                    };
                    fields.next().is_none().then_some((principal, hash, scopes))
                })();
                let Some((principal, hash, scopes)) = parsed else {
                    return Err(format!(
                        "auth.keys_file {} line {}: expected 'principal sha256hex [scope,scope…]'",
                        path.display(),
                        n + 1
                    ));
                };
                by_hash.insert(hash, Principal::new(principal, scopes));
            }
        }
        let jwt = match &config.jwt {
            Some(jwt) => Some(jwt::Jwt::load(jwt, &|name| std::env::var(name).ok())?),
            None => None,
        };
        Ok(Self { by_hash, jwt })
    }

    /// Whether any key or a token issuer is configured (auth is on).
    pub fn enabled(&self) -> bool {
        !self.by_hash.is_empty() || self.jwt.is_some()
    }

    /// The principal a bearer credential stands for: an API key's, or a valid token's
    /// `sub` with its `scope` claim (all but `admin` when it has none).
    ///
    /// # Errors
    /// 401: no such key, or why the token is refused.
    pub fn authenticate(&self, credential: &str) -> Result<Principal, crate::error::ApiError> {
        if let Some(principal) = self.principal(credential) {
            return Ok(principal.clone());
        }
        match &self.jwt {
            Some(verifier) if jwt::Jwt::looks_like_token(credential) => {
                let verified = verifier
                    .verify(credential)
                    .map_err(|error| crate::error::ApiError::bad_token(&error.to_string()))?;
                let scopes = verified.scopes.as_ref().map_or(Scopes::DEFAULT, |names| {
                    Scopes::from_names(names.iter().map(String::as_str))
                });
                Ok(Principal::new(&verified.subject, scopes))
            }
            _ => Err(crate::error::ApiError::unauthorized()),
        }
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
                scopes: None,
            }],
            keys_file: None,
            jwt: None,
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
            jwt: None,
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
            jwt: None,
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
