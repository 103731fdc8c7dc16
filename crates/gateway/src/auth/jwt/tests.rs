//! Tests of the JWT verifier.

use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const SECRET_ENV: &str = "UNBROKEN_TEST_JWT_SECRET";
const JWKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/jwks.json");
const RSA_PRIVATE: &str = include_str!("../../../tests/fixtures/jwt/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../../../tests/fixtures/jwt/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("../../../tests/fixtures/jwt/ec_private.pem");
const EC2_PRIVATE: &str = include_str!("../../../tests/fixtures/jwt/ec2_private.pem");

fn env(name: &str) -> Option<String> {
    (name == SECRET_ENV).then(|| SECRET.to_owned())
}

fn hs256_config() -> JwtConfig {
    JwtConfig {
        hs256_secret_env: Some(SECRET_ENV.into()),
        leeway_s: 60,
        ..JwtConfig::default()
    }
}

fn jwks_config() -> JwtConfig {
    JwtConfig {
        jwks_file: Some(JWKS.into()),
        leeway_s: 60,
        ..JwtConfig::default()
    }
}

fn hs256() -> Jwt {
    Jwt::load(&hs256_config(), &env).unwrap()
}

fn jwks() -> Jwt {
    Jwt::load(&jwks_config(), &env).unwrap()
}

fn now() -> u64 {
    get_current_timestamp()
}

/// Valid claims for alice, an hour from expiring.
fn claims() -> Value {
    json!({"sub": "alice", "scope": "chat models:read", "exp": now() + 3600})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn sign_hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

/// The DER inside a PEM file (standard base64, padded).
fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let body = body.replace('+', "-").replace('/', "_");
    base64url_decode(body.trim_end_matches('=')).unwrap()
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_der(&pem_der(RSA_PRIVATE))
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_der(&pem_der(EC_PRIVATE))
}

fn ec2_key() -> EncodingKey {
    EncodingKey::from_ec_der(&pem_der(EC2_PRIVATE))
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut bits = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            bits |= u32::from(b) << (16 - 8 * i);
        }
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((bits >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn load_error(config: &JwtConfig) -> String {
    Jwt::load(config, &env).unwrap_err()
}

fn jwks_file(json: &Value) -> (tempfile::TempDir, JwtConfig) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let config = JwtConfig {
        jwks_file: Some(path),
        ..jwks_config()
    };
    (dir, config)
}

#[test]
fn an_hs256_token_yields_its_subject_and_scopes() {
    let verified = hs256().verify(&sign_hs256(&claims())).unwrap();
    assert_eq!(
        verified,
        Verified {
            subject: "alice".into(),
            scopes: Some(vec!["chat".into(), "models:read".into()]),
        }
    );
}

#[test]
fn scopes_are_none_without_a_scope_claim_and_split_on_spaces() {
    let jwt = hs256();
    let token = sign_hs256(&json!({"sub": "alice", "exp": now() + 60}));
    assert_eq!(jwt.verify(&token).unwrap().scopes, None);

    let token = sign_hs256(&json!({"sub": "alice", "exp": now() + 60, "scope": ""}));
    assert_eq!(jwt.verify(&token).unwrap().scopes, Some(Vec::new()));

    let token = sign_hs256(&json!({"sub": "alice", "exp": now() + 60, "scope": " a  b "}));
    assert_eq!(
        jwt.verify(&token).unwrap().scopes,
        Some(vec!["a".to_owned(), "b".to_owned()])
    );

    let token = sign_hs256(&json!({"sub": "alice", "exp": now() + 60, "scope": ["a"]}));
    assert_eq!(jwt.verify(&token), Err(JwtError::Malformed));
}

#[test]
fn exp_is_required_and_allows_the_leeway_only() {
    let jwt = hs256();
    let with_exp = |exp: Value| sign_hs256(&json!({"sub": "alice", "exp": exp}));
    assert!(jwt.verify(&with_exp(json!(now() - 30))).is_ok());
    assert_eq!(
        jwt.verify(&with_exp(json!(now() - 120))),
        Err(JwtError::Expired)
    );
    assert_eq!(
        jwt.verify(&with_exp(json!("9999999999"))),
        Err(JwtError::Malformed)
    );
    assert_eq!(
        jwt.verify(&sign_hs256(&json!({"sub": "alice"}))),
        Err(JwtError::Malformed)
    );

    let strict = Jwt::load(
        &JwtConfig {
            leeway_s: 0,
            ..hs256_config()
        },
        &env,
    )
    .unwrap();
    assert_eq!(
        strict.verify(&with_exp(json!(now() - 30))),
        Err(JwtError::Expired)
    );
}

#[test]
fn nbf_is_checked_when_present() {
    let jwt = hs256();
    let with_nbf = |nbf: Value| sign_hs256(&json!({"sub": "a", "exp": now() + 600, "nbf": nbf}));
    assert_eq!(
        jwt.verify(&with_nbf(json!(now() + 120))),
        Err(JwtError::NotYetValid)
    );
    assert!(jwt.verify(&with_nbf(json!(now() + 30))).is_ok());
    assert!(jwt.verify(&with_nbf(json!(now() - 30))).is_ok());
    // A string nbf must not be taken for an absent one (CVE-2026-25537).
    assert_eq!(
        jwt.verify(&with_nbf(json!("99999999999"))),
        Err(JwtError::Malformed)
    );
}

#[test]
fn the_issuer_is_required_only_when_configured() {
    let jwt = Jwt::load(
        &JwtConfig {
            issuer: Some("https://idp.example".into()),
            ..hs256_config()
        },
        &env,
    )
    .unwrap();
    let with_iss = |iss: Option<&str>| {
        let mut claims = claims();
        if let Some(iss) = iss {
            claims["iss"] = iss.into();
        }
        sign_hs256(&claims)
    };
    assert!(jwt.verify(&with_iss(Some("https://idp.example"))).is_ok());
    assert_eq!(
        jwt.verify(&with_iss(Some("https://evil.example"))),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(jwt.verify(&with_iss(None)), Err(JwtError::WrongIssuer));
    assert!(
        hs256()
            .verify(&with_iss(Some("https://any.example")))
            .is_ok()
    );
}

#[test]
fn the_audience_is_required_only_when_configured() {
    let jwt = Jwt::load(
        &JwtConfig {
            audience: Some("unbroken".into()),
            ..hs256_config()
        },
        &env,
    )
    .unwrap();
    let with_aud = |aud: Option<Value>| {
        let mut claims = claims();
        if let Some(aud) = aud {
            claims["aud"] = aud;
        }
        sign_hs256(&claims)
    };
    assert!(jwt.verify(&with_aud(Some(json!("unbroken")))).is_ok());
    assert!(
        jwt.verify(&with_aud(Some(json!(["other", "unbroken"]))))
            .is_ok()
    );
    assert_eq!(
        jwt.verify(&with_aud(Some(json!("other")))),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(jwt.verify(&with_aud(None)), Err(JwtError::WrongAudience));
    assert!(hs256().verify(&with_aud(Some(json!("other")))).is_ok());
}

#[test]
fn a_token_signed_with_another_secret_or_altered_is_refused() {
    let jwt = hs256();
    let other = EncodingKey::from_secret(b"another secret, also 32 bytes long!");
    let token = sign(Algorithm::HS256, None, &claims(), &other);
    assert_eq!(jwt.verify(&token), Err(JwtError::BadSignature));

    let token = sign_hs256(&claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = b64(json!({"sub": "root", "exp": now() + 60})
        .to_string()
        .as_bytes());
    parts[1] = &forged;
    assert_eq!(jwt.verify(&parts.join(".")), Err(JwtError::BadSignature));
}

#[test]
fn an_unsigned_token_is_refused() {
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(claims().to_string().as_bytes());
    let token = format!("{header}.{payload}.");
    assert!(Jwt::looks_like_token(&token));
    assert_eq!(hs256().verify(&token), Err(JwtError::WrongAlgorithm));
    assert_eq!(jwks().verify(&token), Err(JwtError::WrongAlgorithm));
    let token = format!("{token}{}", b64(b"anything"));
    assert_eq!(hs256().verify(&token), Err(JwtError::WrongAlgorithm));
}

#[test]
fn only_the_configured_algorithm_is_accepted() {
    // HS512 with the right secret: still not HS256.
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let token = sign(Algorithm::HS512, None, &claims(), &key);
    assert_eq!(hs256().verify(&token), Err(JwtError::WrongAlgorithm));
    // An RS256 token against the HS256 secret.
    let token = sign(Algorithm::RS256, Some("rsa-1"), &claims(), &rsa_key());
    assert_eq!(hs256().verify(&token), Err(JwtError::WrongAlgorithm));
}

#[test]
fn an_hs256_token_keyed_with_the_rsa_public_key_is_refused() {
    // The classic confusion: HMAC with the public key's bytes as the secret.
    let der = pem_der(RSA_PUBLIC);
    for public in [RSA_PUBLIC.as_bytes(), der.as_slice()] {
        let key = EncodingKey::from_secret(public);
        for kid in [None, Some("rsa-1")] {
            let token = sign(Algorithm::HS256, kid, &claims(), &key);
            assert_eq!(jwks().verify(&token), Err(JwtError::WrongAlgorithm));
        }
    }
}

#[test]
fn rs256_and_es256_tokens_verify_with_the_jwks() {
    let jwt = jwks();
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa-1", rsa_key()),
        (Algorithm::ES256, "ec-1", ec_key()),
    ] {
        for kid in [Some(kid), None] {
            let token = sign(alg, kid, &claims(), &key);
            assert_eq!(
                jwt.verify(&token).unwrap().subject,
                "alice",
                "{alg:?} {kid:?}"
            );
        }
        let expired = json!({"sub": "alice", "exp": now() - 600});
        assert_eq!(
            jwt.verify(&sign(alg, Some(kid), &expired, &key)),
            Err(JwtError::Expired)
        );
    }
    // The RSA key under the EC key's id: checked against ec-1 only.
    let token = sign(Algorithm::RS256, Some("ec-1"), &claims(), &rsa_key());
    assert_eq!(jwt.verify(&token), Err(JwtError::UnknownKey));
}

#[test]
fn the_kid_chooses_the_key() {
    let jwt = jwks();
    let signed_by_ec2 = |kid: Option<&str>| sign(Algorithm::ES256, kid, &claims(), &ec2_key());
    assert!(jwt.verify(&signed_by_ec2(Some("ec-2"))).is_ok());
    // Under ec-1's id it is checked against ec-1 only, and fails.
    assert_eq!(
        jwt.verify(&signed_by_ec2(Some("ec-1"))),
        Err(JwtError::BadSignature)
    );
    assert_eq!(
        jwt.verify(&signed_by_ec2(Some("ec-3"))),
        Err(JwtError::UnknownKey)
    );
    // Without a kid, every ES256 key is tried.
    assert!(jwt.verify(&signed_by_ec2(None)).is_ok());
    // With ec-2 alone: ec-1's tokens fail without a kid, RS256 ones whatever their kid.
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(JWKS).unwrap()).unwrap();
    let (_dir, config) = jwks_file(&json!({"keys": [fixture["keys"][2].clone()]}));
    let ec2_only = Jwt::load(&config, &env).unwrap();
    assert!(ec2_only.verify(&signed_by_ec2(None)).is_ok());
    assert_eq!(
        ec2_only.verify(&sign(Algorithm::ES256, None, &claims(), &ec_key())),
        Err(JwtError::BadSignature)
    );
    let rs256 = sign(Algorithm::RS256, Some("rsa-1"), &claims(), &rsa_key());
    assert_eq!(ec2_only.verify(&rs256), Err(JwtError::WrongAlgorithm));
}

#[test]
fn the_subject_must_be_a_short_printable_string() {
    let jwt = hs256();
    let with_sub = |sub: Value| sign_hs256(&json!({"sub": sub, "exp": now() + 60}));
    assert_eq!(
        jwt.verify(&sign_hs256(&json!({"exp": now() + 60}))),
        Err(JwtError::Malformed)
    );
    for sub in [
        json!(""),
        json!(null),
        json!(42),
        json!("a\nb"),
        json!("a\u{7f}"),
        json!("é".repeat(257)),
    ] {
        assert_eq!(
            jwt.verify(&with_sub(sub.clone())),
            Err(JwtError::Malformed),
            "{sub}"
        );
    }
    let longest = "é".repeat(256);
    assert_eq!(
        jwt.verify(&with_sub(json!(longest))).unwrap().subject,
        longest
    );
}

#[test]
fn malformed_tokens_are_refused() {
    let jwt = hs256();
    let payload = b64(claims().to_string().as_bytes());
    for token in [
        String::new(),
        "not-a-token".into(),
        "a.b".into(),
        "a.b.c.d".into(),
        "a!.b.c".into(),
        format!("{}.{payload}.c2ln", b64(b"not json")),
        format!("{}.{payload}.c2ln", b64(br#"{"typ":"JWT"}"#)),
        format!("{}.%%%.c2ln", b64(br#"{"alg":"HS256"}"#)),
        format!(
            "{}.{}.c2ln",
            b64(br#"{"alg":"HS256"}"#),
            "A".repeat(MAX_TOKEN_LEN)
        ),
    ] {
        assert_eq!(jwt.verify(&token), Err(JwtError::Malformed), "{token:.40}");
    }
}

#[test]
fn looks_like_token_wants_three_base64url_segments() {
    assert!(Jwt::looks_like_token(&sign_hs256(&claims())));
    assert!(Jwt::looks_like_token("eyJh.eyJz."));
    for credential in [
        "",
        "sk-live-abcdef",
        "a.b",
        "a.b.c.d",
        ".b.c",
        "a..c",
        "a.b.c=",
        "a.b+c.d",
        "a b.c.d",
    ] {
        assert!(!Jwt::looks_like_token(credential), "{credential}");
    }
}

#[test]
fn load_errors_name_the_key() {
    let error = load_error(&JwtConfig {
        hs256_secret_env: Some("UNBROKEN_TEST_UNSET".into()),
        ..hs256_config()
    });
    assert_eq!(
        error,
        "auth.jwt.hs256_secret_env: the environment variable UNBROKEN_TEST_UNSET is not set"
    );
    let short = Jwt::load(&hs256_config(), &|_| Some("short".into())).unwrap_err();
    assert!(short.starts_with("auth.jwt.hs256_secret_env: "), "{short}");
    assert!(short.contains("shorter than 32 bytes"), "{short}");

    let error = load_error(&JwtConfig {
        jwks_file: Some("/nonexistent/jwks.json".into()),
        ..jwks_config()
    });
    assert!(
        error.starts_with("auth.jwt.jwks_file /nonexistent/jwks.json: "),
        "{error}"
    );

    let error = load_error(&JwtConfig::default());
    assert_eq!(error, "auth.jwt: set hs256_secret_env or jwks_file");
    let error = load_error(&JwtConfig {
        jwks_file: Some(JWKS.into()),
        ..hs256_config()
    });
    assert!(
        error.starts_with("auth.jwt: set hs256_secret_env or jwks_file"),
        "{error}"
    );
    assert!(error.contains("not both"), "{error}");

    let error = load_error(&JwtConfig {
        leeway_s: 86_400,
        ..hs256_config()
    });
    assert!(error.starts_with("auth.jwt.leeway_s: "), "{error}");
    let error = load_error(&JwtConfig {
        issuer: Some(String::new()),
        ..hs256_config()
    });
    assert!(error.starts_with("auth.jwt.issuer: "), "{error}");
}

#[test]
fn a_jwks_needs_a_usable_rs256_or_es256_key() {
    let (_dir, config) = jwks_file(&json!({"nope": []}));
    let error = load_error(&config);
    assert!(error.contains("not a JWKS"), "{error}");

    let (_dir, config) = jwks_file(&json!({"keys": []}));
    let error = load_error(&config);
    assert!(error.contains("no usable RS256 or ES256 key"), "{error}");

    let rsa = |extra: Value| {
        let mut key = json!({"kty": "RSA", "kid": "r", "n": "_".repeat(344), "e": "AQAB"});
        key.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        key
    };
    let (_dir, config) = jwks_file(&json!({"keys": [
        {"kty": "oct", "kid": "hmac", "k": b64(SECRET.as_bytes())},
        {"kty": "OKP", "crv": "Ed25519", "x": b64(&[7; 32])},
        {"kty": "EC", "crv": "P-384", "x": b64(&[1; 48]), "y": b64(&[2; 48])},
        {"kty": "EC", "crv": "P-256", "kid": "off-curve", "x": b64(&[1; 32]), "y": b64(&[2; 32])},
        {"kty": "weird"},
        rsa(json!({"use": "enc"})),
        rsa(json!({"alg": "RS512"})),
        rsa(json!({"key_ops": ["sign"]})),
        rsa(json!({"n": "_".repeat(172)})),
    ]}));
    let error = load_error(&config);
    assert!(
        error.starts_with(&format!(
            "auth.jwt.jwks_file {}: no usable RS256 or ES256 key (",
            config.jwks_file.as_ref().unwrap().display()
        )),
        "{error}"
    );
    for reason in [
        "key 0 (kid hmac): a symmetric (oct) key",
        "key 1: an OKP key",
        "key 2: curve P384, not P-256",
        "key 3 (kid off-curve): the key is not usable for ES256",
        "key 4: not a JWK",
        "key 5 (kid r): its use is not \"sig\"",
        "key 6 (kid r): its alg is RS512, not RS256",
        "key 7 (kid r): its key_ops do not include \"verify\"",
        "key 8 (kid r): an RSA modulus of 1032 bits",
    ] {
        assert!(error.contains(reason), "{reason} in {error}");
    }

    // A usable key among unusable ones is enough; the rest are skipped.
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(JWKS).unwrap()).unwrap();
    let (_dir, config) = jwks_file(&json!({"keys": [
        {"kty": "oct", "k": b64(SECRET.as_bytes())},
        fixture["keys"][1].clone(),
    ]}));
    let jwt = Jwt::load(&config, &env).unwrap();
    let token = sign(Algorithm::ES256, Some("ec-1"), &claims(), &ec_key());
    assert!(jwt.verify(&token).is_ok());
    // The skipped oct key does not make HS256 acceptable.
    let token = sign(
        Algorithm::HS256,
        None,
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    assert_eq!(jwt.verify(&token), Err(JwtError::WrongAlgorithm));
}

#[test]
fn debug_does_not_print_the_secret() {
    let printed = format!("{:?}", hs256());
    assert!(printed.contains(SECRET_ENV), "{printed}");
    assert!(!printed.contains(SECRET), "{printed}");
    let printed = format!("{:?}", jwks());
    assert!(printed.contains("ec-2"), "{printed}");
}

#[test]
fn base64url_decoding_round_trips() {
    for len in 0..10 {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 200) as u8).collect();
        assert_eq!(base64url_decode(&b64(&bytes)), Some(bytes));
    }
    assert_eq!(base64url_decode("A"), None);
    assert_eq!(base64url_decode("AA=="), None);
    assert_eq!(base64url_decode("A+"), None);
}
