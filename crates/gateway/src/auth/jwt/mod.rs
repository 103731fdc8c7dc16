//! JSON Web Tokens as bearer credentials (`[auth.jwt]`).
//!
//! A [`Jwt`] checks a token's signature against the configured keys — an HS256 secret read
//! from an environment variable, or the RS256 / ES256 public keys of a JWKS file — then its
//! `exp`, `nbf`, `iss` and `aud`, and yields its subject (the principal) and scopes. The
//! algorithm comes from the configuration, never from the token: a token whose `alg` is not
//! that of a configured key (`none`, HS256 against RSA keys, …) is refused before any
//! signature check. Neither a token nor the secret is ever logged or printed.

use std::fmt;
use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use serde::Deserialize;

use crate::config::JwtConfig;

/// The shortest HS256 secret accepted: the size of the hash output (RFC 7518 §3.2).
const MIN_SECRET_BYTES: usize = 32;
/// The RSA modulus sizes accepted, in bits.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;
/// The largest `leeway_s` accepted: more is no longer clock skew.
const MAX_LEEWAY_S: u64 = 3600;
/// The longest token looked at; a longer one is malformed.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// The longest `sub`, in characters.
const MAX_SUBJECT_CHARS: usize = 256;

/// Verifies bearer tokens as `[auth.jwt]` says.
///
/// Its `Debug` shows where the keys come from (the variable's name, the file's path) and
/// their ids, never the secret.
#[derive(Debug)]
pub struct Jwt {
    source: Source,
    /// One per accepted algorithm, each with its keys.
    families: Vec<Family>,
}

/// Where the keys come from.
enum Source {
    /// The HS256 secret in this environment variable.
    Secret { env: String },
    /// The public keys of this JWKS file.
    Jwks { path: PathBuf },
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret { env } => write!(f, "the HS256 secret in ${env}"),
            Self::Jwks { path } => write!(f, "the JWKS file {}", path.display()),
        }
    }
}

/// The keys of one algorithm and the rules their tokens are checked by.
#[derive(Debug)]
struct Family {
    alg: Algorithm,
    /// `algorithms == [alg]`; the claims rules of the config.
    validation: Validation,
    keys: Vec<Key>,
}

/// One verifying key.
struct Key {
    kid: Option<String>,
    decoding: DecodingKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The `sub` claim: the principal.
    pub subject: String,
    /// The `scope` claim split on spaces; `None` when the token has no `scope` claim.
    pub scopes: Option<Vec<String>>,
}

/// Why a token was refused. The message is meant for the client.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JwtError {
    /// `exp` is past, beyond the leeway.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is ahead, beyond the leeway.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    /// `aud` is missing or does not name the configured audience.
    #[error("the token's audience is not accepted")]
    WrongAudience,
    /// The signature does not verify with the chosen key(s).
    #[error("the token's signature does not verify")]
    BadSignature,
    /// No configured key has the token's `kid`.
    #[error("no configured key matches the token")]
    UnknownKey,
    /// The token's `alg` is not the algorithm of a configured key.
    #[error("the token's algorithm is not the configured one")]
    WrongAlgorithm,
    /// Not a JWT, bad base64 or JSON, `exp` missing or not a number, `sub` missing or
    /// unacceptable.
    #[error("the token is malformed")]
    Malformed,
}

impl Jwt {
    /// Build the verifier from `[auth.jwt]`; `env` looks up environment variables (the
    /// secret's).
    ///
    /// # Errors
    /// A message naming the offending key: exactly one of `hs256_secret_env` and
    /// `jwks_file` must be set; the secret's variable must be set and hold at least 32
    /// bytes; the JWKS file must be readable JSON with at least one usable RS256 or ES256
    /// key (unusable keys are skipped with a warning); `leeway_s` is at most an hour.
    pub fn load(config: &JwtConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        // Pin the backend: were another crate to turn on jsonwebtoken's `aws_lc_rs` too, its
        // own choice from features would be a provider that panics on first use. An `Err`
        // means a provider is already installed, which is as good.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();

        if config.leeway_s > MAX_LEEWAY_S {
            return Err(format!(
                "auth.jwt.leeway_s: {} is more than {MAX_LEEWAY_S} seconds",
                config.leeway_s
            ));
        }
        for (key, value) in [("issuer", &config.issuer), ("audience", &config.audience)] {
            if value.as_deref() == Some("") {
                return Err(format!(
                    "auth.jwt.{key}: empty (leave it out to accept any)"
                ));
            }
        }
        let (source, keys) = match (&config.hs256_secret_env, &config.jwks_file) {
            (Some(var), None) => (
                Source::Secret { env: var.clone() },
                vec![(Algorithm::HS256, secret_key(var, env)?)],
            ),
            (None, Some(path)) => (Source::Jwks { path: path.clone() }, jwks_keys(path)?),
            (Some(_), Some(_)) => {
                return Err("auth.jwt: set hs256_secret_env or jwks_file, not both".into());
            }
            (None, None) => return Err("auth.jwt: set hs256_secret_env or jwks_file".into()),
        };
        let mut families: Vec<Family> = Vec::new();
        for (alg, key) in keys {
            match families.iter_mut().find(|family| family.alg == alg) {
                Some(family) => family.keys.push(key),
                None => families.push(Family {
                    alg,
                    validation: validation(config, alg),
                    keys: vec![key],
                }),
            }
        }
        Ok(Self { source, families })
    }

    /// Whether a bearer credential looks like a JWT — three base64url segments separated
    /// by dots, the first two non-empty — so the caller tries it as a token rather than as
    /// an API key. The signature may be empty, so an unsigned (`alg: none`) token is
    /// recognised, and then refused by [`Jwt::verify`].
    pub fn looks_like_token(credential: &str) -> bool {
        let base64url = |segment: &str| {
            segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let mut segments = credential.split('.');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some(header), Some(payload), Some(signature), None) => {
                !header.is_empty()
                    && !payload.is_empty()
                    && [header, payload, signature].into_iter().all(base64url)
            }
            _ => false,
        }
    }

    /// Verify `token` and return its subject and scopes.
    ///
    /// The token's `alg` must be that of a configured key. With a JWKS, a token with a
    /// `kid` is checked against the keys with that id only; one without is tried against
    /// every key of its algorithm.
    ///
    /// # Errors
    /// Which check the token failed, as a [`JwtError`].
    pub fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let header = peek_header(token)?;
        let family = header
            .alg
            .parse::<Algorithm>()
            .ok()
            .and_then(|alg| self.families.iter().find(|family| family.alg == alg))
            .ok_or(JwtError::WrongAlgorithm)?;
        // The single secret has no id: a `kid` in an HS256 token means nothing here.
        let kid = match self.source {
            Source::Secret { .. } => None,
            Source::Jwks { .. } => header.kid.as_deref(),
        };
        let mut keys = family
            .keys
            .iter()
            .filter(|key| kid.is_none() || key.kid.as_deref() == kid)
            .peekable();
        if keys.peek().is_none() {
            return Err(JwtError::UnknownKey);
        }
        for key in keys {
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, &family.validation) {
                Ok(data) => return data.claims.verified(),
                // Another key of the family may have signed it.
                Err(error) if JwtError::of(error.kind()) == JwtError::BadSignature => {}
                // The signature checks before the claims, so this is the token's fault.
                Err(error) => return Err(JwtError::of(error.kind())),
            }
        }
        Err(JwtError::BadSignature)
    }
}

impl JwtError {
    /// What jsonwebtoken's refusal means for the client. (Not a `From`: that would put
    /// jsonwebtoken's types in this crate's public API.)
    fn of(kind: &ErrorKind) -> Self {
        match kind {
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => Self::WrongIssuer,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => Self::WrongAudience,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::InvalidAlgorithmName => Self::WrongAlgorithm,
            // A key the backend cannot use verifies nothing (load checks keys first).
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::Provider(_) => Self::BadSignature,
            _ => Self::Malformed,
        }
    }
}

/// The claims read from a token beyond those jsonwebtoken checks itself.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    scope: Option<String>,
}

impl Claims {
    fn verified(self) -> Result<Verified, JwtError> {
        let subject = self
            .sub
            .filter(|sub| {
                !sub.is_empty()
                    && sub.chars().count() <= MAX_SUBJECT_CHARS
                    && !sub.chars().any(char::is_control)
            })
            .ok_or(JwtError::Malformed)?;
        let scopes = self.scope.map(|scope| {
            scope
                .split(' ')
                .filter(|scope| !scope.is_empty())
                .map(str::to_owned)
                .collect()
        });
        Ok(Verified { subject, scopes })
    }
}

/// The claims rules for tokens of `alg`: `exp` required, `nbf` checked when present,
/// `iss` / `aud` required and checked only when configured.
fn validation(config: &JwtConfig, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = config.leeway_s;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    if let Some(issuer) = &config.issuer {
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".into());
    }
    if let Some(audience) = &config.audience {
        validation.set_audience(&[audience]);
        validation.validate_aud = true;
        validation.required_spec_claims.insert("aud".into());
    }
    validation
}

/// The HS256 key from the environment variable `var`.
fn secret_key(var: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Key, String> {
    let secret = env(var).ok_or_else(|| {
        format!("auth.jwt.hs256_secret_env: the environment variable {var} is not set")
    })?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "auth.jwt.hs256_secret_env: the secret in {var} is shorter than {MIN_SECRET_BYTES} bytes"
        ));
    }
    Ok(Key {
        kid: None,
        decoding: DecodingKey::from_secret(secret.as_bytes()),
    })
}

/// The usable keys of the JWKS file at `path`, each with its algorithm.
fn jwks_keys(path: &Path) -> Result<Vec<(Algorithm, Key)>, String> {
    #[derive(Deserialize)]
    struct JwkSet {
        // Values, not `Jwk`s: one key of a kind jsonwebtoken does not know must not make
        // the whole set unreadable.
        keys: Vec<serde_json::Value>,
    }

    let at = |message: String| format!("auth.jwt.jwks_file {}: {message}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| at(format!("not a JWKS ({{\"keys\": [...]}}): {e}")))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (n, value) in set.keys.into_iter().enumerate() {
        let name = match value.get("kid").and_then(serde_json::Value::as_str) {
            Some(kid) => format!("key {n} (kid {kid})"),
            None => format!("key {n}"),
        };
        match usable_key(value) {
            Ok(key) => keys.push(key),
            Err(why) => skipped.push(format!("{name}: {why}")),
        }
    }
    if keys.is_empty() {
        let why = if skipped.is_empty() {
            "the set is empty".to_owned()
        } else {
            skipped.join("; ")
        };
        return Err(at(format!("no usable RS256 or ES256 key ({why})")));
    }
    for why in &skipped {
        tracing::warn!("auth.jwt.jwks_file {}: skipping {why}", path.display());
    }
    Ok(keys)
}

/// A JWKS entry as a verifying key: an RSA key (2048 to 4096 bits) for RS256 or an EC
/// P-256 key for ES256, meant for signatures.
fn usable_key(value: serde_json::Value) -> Result<(Algorithm, Key), String> {
    let jwk: Jwk =
        serde_json::from_value(value).map_err(|e| format!("not a JWK this gateway knows: {e}"))?;
    let common = &jwk.common;
    if common
        .public_key_use
        .as_ref()
        .is_some_and(|key_use| *key_use != PublicKeyUse::Signature)
    {
        return Err("its use is not \"sig\"".into());
    }
    if common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err("its key_ops do not include \"verify\"".into());
    }
    let (alg, key_alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
        AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        AlgorithmParameters::EllipticCurve(params) => {
            return Err(format!("curve {:?}, not P-256", params.curve));
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (oct) key; HS256 takes hs256_secret_env".into());
        }
        AlgorithmParameters::OctetKeyPair(_) => {
            return Err("an OKP key; only RS256 and ES256 are supported".into());
        }
    };
    if let Some(other) = common.key_algorithm.filter(|&other| other != key_alg) {
        return Err(format!("its alg is {other:?}, not {alg:?}"));
    }
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key material: {e}"))?;
    if let DecodingKeyKind::RsaModulusExponent { n, .. } = decoding.kind() {
        let bits = modulus_bits(n);
        if !RSA_BITS.contains(&bits) {
            return Err(format!(
                "an RSA modulus of {bits} bits, not {} to {}",
                RSA_BITS.start(),
                RSA_BITS.end()
            ));
        }
    }
    // Building the verifier parses the key (an EC point must lie on the curve); an empty
    // signature then merely fails to verify.
    jsonwebtoken::crypto::verify("", b"", &decoding, alg)
        .map_err(|e| format!("the key is not usable for {alg:?}: {e}"))?;
    Ok((
        alg,
        Key {
            kid: common.key_id.clone(),
            decoding,
        },
    ))
}

/// The size in bits of a big-endian unsigned integer.
fn modulus_bits(n: &[u8]) -> usize {
    let n = &n[n.iter().take_while(|&&b| b == 0).count()..];
    match n.first() {
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// The header fields read before verifying: which key and which algorithm.
#[derive(Deserialize)]
struct PeekedHeader {
    alg: String,
    kid: Option<String>,
}

/// Read a token's header without trusting it: only to choose the key, and to refuse an
/// algorithm (`none` included) that no configured key has.
fn peek_header(token: &str) -> Result<PeekedHeader, JwtError> {
    if !Jwt::looks_like_token(token) {
        return Err(JwtError::Malformed);
    }
    let (header, _) = token.split_once('.').ok_or(JwtError::Malformed)?;
    let json = base64url_decode(header).ok_or(JwtError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| JwtError::Malformed)
}

/// Decode unpadded base64url (RFC 4648 §5), as JWS segments are written. jsonwebtoken
/// decodes the token again when it verifies; this is only for [`peek_header`].
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(b: u8) -> Option<u32> {
        let value = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        Some(u32::from(value))
    }

    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for chunk in text.as_bytes().chunks(4) {
        let mut bits = 0u32;
        for &b in chunk {
            bits = bits << 6 | sextet(b)?;
        }
        // 4 characters carry 3 bytes, 3 carry 2, 2 carry 1.
        let bytes = chunk.len() - 1;
        bits <<= 6 * (4 - chunk.len());
        out.extend_from_slice(&bits.to_be_bytes()[1..=bytes]);
    }
    Some(out)
}

#[cfg(test)]
mod tests;
