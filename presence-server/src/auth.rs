//! Who a connection (or an HTTP request) speaks for, and what its token
//! lets it see.
//!
//! The token is checked at the WebSocket upgrade (and again for each `auth`
//! refresh) or on each HTTP request; a refused token never gets a session. No frame can name another
//! user afterwards: the protocol has no field for it. A token may narrow what
//! its user may join and watch ([`Scope`]); the [`AudiencePolicy`] narrows it
//! further.
//!
//! [`AudiencePolicy`]: crate::AudiencePolicy

use std::collections::HashMap;

use axum::http::{HeaderMap, header};
use futures_util::future::BoxFuture;
use presence_core::limits::MAX_INFO_BYTES;
use presence_core::{JsonObject, Millis, RoomId, UserId};
use serde::Deserialize;

/// Entries one `rooms` or `watch` claim may hold: a bigger claim is refused
/// (401), so a token cannot make every `join` scan a huge list.
pub const MAX_SCOPE_ENTRIES: usize = 1000;

/// Why a token was refused. Every variant becomes HTTP 401 (or close 4101
/// on a refresh); the detail is logged, not sent, so a caller cannot probe
/// which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("no token")]
    Missing,
    /// The token did not verify (signature, format, algorithm, audience,
    /// issuer, not valid yet).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token names no usable user id.
    #[error("token names no valid user: {0}")]
    BadUser(String),
    /// A `rooms` or `watch` claim is not a list of ids and `prefix*`
    /// patterns, or is longer than [`MAX_SCOPE_ENTRIES`]; or an `info`
    /// claim is not an object within its bounds.
    #[error("bad {claim} claim: {reason}")]
    BadClaim {
        /// `rooms`, `watch` or `info`.
        claim: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A JWT key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtKeyError {
    /// An HMAC secret shorter than [`JwtAuth::MIN_SECRET_BYTES`].
    #[error("the JWT secret must be at least {} bytes", JwtAuth::MIN_SECRET_BYTES)]
    WeakSecret,
    /// The key does not parse as a PEM public key of the algorithm's family.
    #[error("the public key is not a PEM {family} key: {detail}")]
    BadKey {
        /// `RSA` or `EC`.
        family: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// The algorithm does not go with this kind of key.
    #[error("{0:?} does not go with this kind of key")]
    WrongAlgorithm(jsonwebtoken::Algorithm),
}

/// Which rooms a token may join, or which users it may watch.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Scope {
    /// No limit from the token (the audience policy still decides).
    #[default]
    Any,
    /// Only these: exact ids, or prefixes written with a trailing `*`
    /// (`"team-42-*"`; `"*"` alone is any).
    Only(Vec<String>),
}

impl Scope {
    /// Nothing at all.
    pub fn none() -> Self {
        Scope::Only(Vec::new())
    }

    /// Whether `id` is within the scope.
    pub fn allows(&self, id: &str) -> bool {
        match self {
            Scope::Any => true,
            Scope::Only(entries) => entries.iter().any(|e| match e.strip_suffix('*') {
                Some(prefix) => id.starts_with(prefix),
                None => e == id,
            }),
        }
    }

    /// Reads a claim: a list of ids (checked with `valid`) and `prefix*`
    /// patterns, at most [`MAX_SCOPE_ENTRIES`].
    fn from_claim(
        claim: &'static str,
        entries: Vec<String>,
        valid: impl Fn(&str) -> bool,
    ) -> Result<Self, AuthError> {
        let bad = |reason: String| AuthError::BadClaim { claim, reason };
        if entries.len() > MAX_SCOPE_ENTRIES {
            return Err(bad(format!(
                "{} entries; at most {MAX_SCOPE_ENTRIES}",
                entries.len()
            )));
        }
        for e in &entries {
            let ok = match e.strip_suffix('*') {
                Some(prefix) => prefix.is_empty() || valid(prefix),
                None => valid(e),
            };
            if !ok {
                return Err(bad(format!("{e:?} is not an id or a prefix ending in *")));
            }
        }
        Ok(Scope::Only(entries))
    }
}

/// Who a token speaks for and what it lets them see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user: UserId,
    /// The rooms they may join (and read over HTTP).
    pub rooms: Scope,
    /// The users they may watch (and read over HTTP) beyond shared rooms.
    pub watch: Scope,
    /// When the token stops being valid, by the server's clock: refused from
    /// then on, and a socket is closed with 4101 then unless the client sent
    /// a fresh token first.
    pub expires: Option<Millis>,
    /// What members see about the user while online (name, avatar), from
    /// the token's `info` claim: a JSON object of at most
    /// [`MAX_INFO_BYTES`] compact.
    pub info: Option<JsonObject>,
    /// The token's other claims (team, roles, ...), for the audience policy.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl From<UserId> for Identity {
    /// A user with no limits from the token and no expiry.
    fn from(user: UserId) -> Self {
        Self {
            user,
            rooms: Scope::Any,
            watch: Scope::Any,
            expires: None,
            info: None,
            claims: serde_json::Map::new(),
        }
    }
}

/// What an [`Authenticator`] may look at: the token (the `token` query
/// parameter, or an `Authorization: Bearer` header), and the WebSocket
/// upgrade's (or HTTP request's) headers, cookies included, and query.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    /// The presented token, if any.
    pub token: Option<&'a str>,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The request's query parameters.
    pub query: &'a HashMap<String, String>,
}

impl AuthRequest<'_> {
    /// The value of cookie `name`, if the request carries it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find_map(|(k, v)| (k == name).then_some(v))
    }
}

/// Decides who a request speaks for. Async, so an embedding app can look up
/// a session; bounded by
/// [`ServerConfig::policy_timeout`](crate::ServerConfig::policy_timeout)
/// (a timeout is refused with 503). For tokens checked without I/O
/// ([`JwtAuth`], [`DevAuth`]), implement [`TokenAuthenticator`] instead.
pub trait Authenticator: Send + Sync + 'static {
    /// Who `request` speaks for, or why it is refused.
    fn authenticate<'a>(
        &'a self,
        request: &'a AuthRequest<'a>,
    ) -> BoxFuture<'a, Result<Identity, AuthError>>;
}

/// An [`Authenticator`] that needs only the token and no I/O.
pub trait TokenAuthenticator: Send + Sync + 'static {
    /// Who `token` speaks for, or why it is refused.
    fn check(&self, token: &str) -> Result<Identity, AuthError>;
}

impl<T: TokenAuthenticator> Authenticator for T {
    fn authenticate<'a>(
        &'a self,
        request: &'a AuthRequest<'a>,
    ) -> BoxFuture<'a, Result<Identity, AuthError>> {
        let result = request
            .token
            .ok_or(AuthError::Missing)
            .and_then(|t| self.check(t));
        Box::pin(std::future::ready(result))
    }
}

/// What a token without `rooms`/`watch` claims may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DefaultAudience {
    /// Whatever the audience policy allows (the library's default).
    #[default]
    Open,
    /// No room and nobody to watch: every token must carry its claims.
    None,
}

/// JSON Web Tokens: `sub` is the user id, `exp` is required and `nbf`
/// honoured when present with 30 s of leeway for clock skew between issuer
/// and server; `exp` has none in the end: the server refuses a token and
/// closes its socket once `exp` passes by its own clock (see
/// `Hub::authenticate`), so a token is never welcomed and then closed. HMAC (HS256/384/512) with a shared secret, or RSA
/// (RS/PS 256/384/512) and EC (ES256/384) with a PEM public key; optional
/// `aud` and `iss` checks; optional `rooms` and `watch` claims (see
/// [`Scope`]).
pub struct JwtAuth {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    default_audience: DefaultAudience,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: Option<u64>,
    rooms: Option<Vec<String>>,
    watch: Option<Vec<String>>,
    info: Option<serde_json::Value>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl JwtAuth {
    /// Leeway applied to `exp` and `nbf`, in seconds.
    pub const LEEWAY_SECS: u64 = 30;

    /// Shortest secret accepted, in bytes (HS256 keys should be 256 bits).
    pub const MIN_SECRET_BYTES: usize = 32;

    /// HS256 with `secret` (at least
    /// [`MIN_SECRET_BYTES`](Self::MIN_SECRET_BYTES) bytes).
    pub fn hs256(secret: &[u8]) -> Result<Self, JwtKeyError> {
        Self::hmac(jsonwebtoken::Algorithm::HS256, secret)
    }

    /// HS256, HS384 or HS512 with `secret`.
    pub fn hmac(alg: jsonwebtoken::Algorithm, secret: &[u8]) -> Result<Self, JwtKeyError> {
        use jsonwebtoken::Algorithm::{HS256, HS384, HS512};
        if !matches!(alg, HS256 | HS384 | HS512) {
            return Err(JwtKeyError::WrongAlgorithm(alg));
        }
        if secret.len() < Self::MIN_SECRET_BYTES {
            return Err(JwtKeyError::WeakSecret);
        }
        let key =
            jsonwebtoken::DecodingKey::from_secret(secret).map_err(|_| JwtKeyError::WeakSecret)?;
        Ok(Self::with_key(alg, key))
    }

    /// An RSA (RS256/384/512, PS256/384/512) or EC (ES256/384) algorithm with
    /// the issuer's PEM public key.
    pub fn public_key(alg: jsonwebtoken::Algorithm, pem: &[u8]) -> Result<Self, JwtKeyError> {
        use jsonwebtoken::Algorithm::*;
        let (family, key) = match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                ("RSA", jsonwebtoken::DecodingKey::from_rsa_pem(pem))
            }
            ES256 | ES384 => ("EC", jsonwebtoken::DecodingKey::from_ec_pem(pem)),
            other => return Err(JwtKeyError::WrongAlgorithm(other)),
        };
        let key = key.map_err(|e| JwtKeyError::BadKey {
            family,
            detail: e.to_string(),
        })?;
        Ok(Self::with_key(alg, key))
    }

    fn with_key(alg: jsonwebtoken::Algorithm, key: jsonwebtoken::DecodingKey) -> Self {
        // One algorithm only: a token may not pick another (`alg: none`, or
        // HS256 signed with the public key, are refused).
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.leeway = Self::LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key,
            validation,
            default_audience: DefaultAudience::Open,
        }
    }

    /// Requires `aud` to be (or contain) `audience`.
    pub fn audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        let mut required: Vec<&str> = vec!["exp", "sub", "aud"];
        if self.validation.iss.is_some() {
            required.push("iss");
        }
        self.validation.set_required_spec_claims(&required);
        self
    }

    /// Requires `iss` to be `issuer`.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        let mut required: Vec<&str> = vec!["exp", "sub", "iss"];
        if self.validation.validate_aud {
            required.push("aud");
        }
        self.validation.set_required_spec_claims(&required);
        self
    }

    /// What a token without `rooms`/`watch` claims may do (default: open).
    pub fn default_audience(mut self, default: DefaultAudience) -> Self {
        self.default_audience = default;
        self
    }
}

impl TokenAuthenticator for JwtAuth {
    fn check(&self, token: &str) -> Result<Identity, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet (nbf)".into()),
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        let claims = data.claims;
        let user = UserId::new(claims.sub).map_err(|e| AuthError::BadUser(e.to_string()))?;
        let default = match self.default_audience {
            DefaultAudience::Open => Scope::Any,
            DefaultAudience::None => Scope::none(),
        };
        let scope = |claim, entries: Option<Vec<String>>, valid: fn(&str) -> bool| {
            entries.map_or(Ok(default.clone()), |e| Scope::from_claim(claim, e, valid))
        };
        let info =
            match claims.info {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(JsonObject::parse(&v.to_string(), MAX_INFO_BYTES).map_err(
                    |e| AuthError::BadClaim {
                        claim: "info",
                        reason: e.to_string(),
                    },
                )?),
            };
        Ok(Identity {
            info,
            rooms: scope("rooms", claims.rooms, |id| RoomId::new(id).is_ok())?,
            watch: scope("watch", claims.watch, |id| UserId::new(id).is_ok())?,
            expires: claims.exp.map(|s| Millis(s.saturating_mul(1000))),
            claims: claims.rest,
            user,
        })
    }
}

/// Development mode: the token *is* the user name. Anyone can be anyone, so
/// the server logs a loud warning when it starts with this. Never use it in
/// production.
#[derive(Debug, Clone, Copy, Default)]
pub struct DevAuth;

impl TokenAuthenticator for DevAuth {
    fn check(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        UserId::new(token)
            .map(Identity::from)
            .map_err(|e| AuthError::BadUser(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde::Serialize;

    #[derive(Serialize)]
    struct T<'a> {
        sub: &'a str,
        exp: u64,
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn token(secret: &[u8], sub: &str, exp: u64) -> String {
        encode(
            &Header::default(),
            &T { sub, exp },
            &EncodingKey::from_secret(secret).expect("non-empty secret"),
        )
        .expect("encodes")
    }

    #[test]
    fn jwt_names_the_subject_and_refuses_expired_and_forged_tokens() {
        const S: &[u8] = b"0123456789abcdef0123456789abcdef";
        assert_eq!(
            JwtAuth::hs256(b"short").err(),
            Some(JwtKeyError::WeakSecret)
        );
        let auth = JwtAuth::hs256(S).expect("long enough");
        let ok = token(S, "ana", now() + 60);
        assert_eq!(
            auth.check(&ok).map(|i| i.user.to_string()),
            Ok("ana".into())
        );
        let expired = token(S, "ana", now() - 3600);
        assert_eq!(auth.check(&expired), Err(AuthError::Expired));
        let forged = token(b"0123456789abcdef0123456789abcdeX", "ana", now() + 60);
        assert!(matches!(auth.check(&forged), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.check("garbage"), Err(AuthError::Invalid(_))));
        let bad_sub = token(S, "a b", now() + 60);
        assert!(matches!(auth.check(&bad_sub), Err(AuthError::BadUser(_))));
    }

    #[test]
    fn jwt_honours_nbf_with_the_leeway() {
        const S: &[u8] = b"0123456789abcdef0123456789abcdef";
        let auth = JwtAuth::hs256(S).expect("long enough");
        let with_nbf = |nbf: u64| {
            encode(
                &Header::default(),
                &serde_json::json!({ "sub": "ana", "exp": now() + 3600, "nbf": nbf }),
                &EncodingKey::from_secret(S).expect("non-empty secret"),
            )
            .expect("encodes")
        };
        assert!(auth.check(&with_nbf(now() + 600)).is_err());
        assert!(
            auth.check(&with_nbf(now() + 10)).is_ok(),
            "within the leeway"
        );
        assert!(auth.check(&with_nbf(now() - 10)).is_ok());
    }

    fn sign(alg: jsonwebtoken::Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
        encode(&Header::new(alg), &claims, key).expect("encodes")
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut c = serde_json::json!({ "sub": "ana", "exp": now() + 600 });
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        c
    }

    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/keys/rsa-private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/keys/rsa-public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../tests/keys/ec-private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../tests/keys/ec-public.pem");

    #[test]
    fn every_supported_algorithm_verifies_its_own_tokens_only() {
        use jsonwebtoken::Algorithm::*;
        const S: &[u8] = b"0123456789abcdef0123456789abcdef";
        let hmac = EncodingKey::from_secret(S).expect("key");
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa key");
        let ec = EncodingKey::from_ec_pem(EC_PRIVATE).expect("ec key");
        let cases = [
            (HS256, JwtAuth::hmac(HS256, S), &hmac),
            (HS384, JwtAuth::hmac(HS384, S), &hmac),
            (HS512, JwtAuth::hmac(HS512, S), &hmac),
            (RS256, JwtAuth::public_key(RS256, RSA_PUBLIC), &rsa),
            (PS256, JwtAuth::public_key(PS256, RSA_PUBLIC), &rsa),
            (ES256, JwtAuth::public_key(ES256, EC_PUBLIC), &ec),
        ];
        for (alg, auth, key) in cases {
            let auth = auth.expect("a usable key");
            let ok = sign(alg, key, claims(serde_json::json!({})));
            assert_eq!(
                auth.check(&ok).map(|i| i.user.to_string()),
                Ok("ana".into()),
                "{alg:?}"
            );
        }
        // A token may not choose its algorithm: HS256 signed with the RSA
        // public key (the classic confusion), or another RSA algorithm.
        let rs256 = JwtAuth::public_key(RS256, RSA_PUBLIC).expect("key");
        let confused = sign(
            HS256,
            &EncodingKey::from_secret(RSA_PUBLIC).expect("key"),
            claims(serde_json::json!({})),
        );
        assert!(matches!(rs256.check(&confused), Err(AuthError::Invalid(_))));
        let ps = sign(PS256, &rsa, claims(serde_json::json!({})));
        assert!(matches!(rs256.check(&ps), Err(AuthError::Invalid(_))));
        // alg "none": header and payload with an empty signature.
        let b64 = |v: &str| {
            use std::fmt::Write;
            // URL-safe base64 without padding, by hand for the test only.
            const T: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in v.as_bytes().chunks(3) {
                let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b))
                    << (8 * (3 - chunk.len()));
                for i in 0..=chunk.len() {
                    let _ = out.write_char(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            out
        };
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&claims(serde_json::json!({})).to_string())
        );
        assert!(matches!(rs256.check(&none), Err(AuthError::Invalid(_))));
        assert!(matches!(
            JwtAuth::hmac(HS256, S).expect("key").check(&none),
            Err(AuthError::Invalid(_))
        ));
        // Keys that do not fit.
        assert!(matches!(
            JwtAuth::public_key(RS256, EC_PUBLIC),
            Err(JwtKeyError::BadKey { .. })
        ));
        assert!(matches!(
            JwtAuth::public_key(ES256, b"not a pem"),
            Err(JwtKeyError::BadKey { .. })
        ));
        assert_eq!(
            JwtAuth::hmac(RS256, S).err(),
            Some(JwtKeyError::WrongAlgorithm(RS256))
        );
        assert_eq!(
            JwtAuth::public_key(HS256, RSA_PUBLIC).err(),
            Some(JwtKeyError::WrongAlgorithm(HS256))
        );
        // Another key pair of the right kind.
        let other = sign(ES256, &ec, claims(serde_json::json!({})));
        assert!(rs256.check(&other).is_err());
    }

    #[test]
    fn missing_claims_audience_issuer_and_subjects_are_refused() {
        const S: &[u8] = b"0123456789abcdef0123456789abcdef";
        let key = EncodingKey::from_secret(S).expect("key");
        let hs = |c| sign(jsonwebtoken::Algorithm::HS256, &key, c);
        let plain = JwtAuth::hs256(S).expect("key");
        let no_exp = hs(serde_json::json!({ "sub": "ana" }));
        assert!(matches!(plain.check(&no_exp), Err(AuthError::Invalid(_))));
        let no_sub = hs(serde_json::json!({ "exp": now() + 600 }));
        assert!(matches!(plain.check(&no_sub), Err(AuthError::Invalid(_))));
        for sub in [r"a\u0007b", &"x".repeat(129), ""] {
            let t = hs(serde_json::from_str(&format!(
                r#"{{"sub":"{sub}","exp":{}}}"#,
                now() + 600
            ))
            .expect("json"));
            assert!(
                matches!(plain.check(&t), Err(AuthError::BadUser(_))),
                "{sub:?}"
            );
        }
        let strict = JwtAuth::hs256(S)
            .expect("key")
            .audience("chat")
            .issuer("https://id.example");
        let good = hs(claims(
            serde_json::json!({ "aud": "chat", "iss": "https://id.example" }),
        ));
        assert!(strict.check(&good).is_ok());
        for bad in [
            serde_json::json!({ "aud": "other", "iss": "https://id.example" }),
            serde_json::json!({ "aud": "chat", "iss": "https://evil.example" }),
            serde_json::json!({ "iss": "https://id.example" }),
            serde_json::json!({ "aud": "chat" }),
        ] {
            let t = hs(claims(bad.clone()));
            assert!(
                matches!(strict.check(&t), Err(AuthError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn rooms_and_watch_claims_narrow_the_identity_and_are_bounded() {
        const S: &[u8] = b"0123456789abcdef0123456789abcdef";
        let key = EncodingKey::from_secret(S).expect("key");
        let hs = |c| sign(jsonwebtoken::Algorithm::HS256, &key, c);
        let auth = JwtAuth::hs256(S).expect("key");
        let t = hs(claims(
            serde_json::json!({ "rooms": ["general", "team-42-*"], "watch": ["bob"] }),
        ));
        let who = auth.check(&t).expect("valid");
        assert!(who.rooms.allows("general") && who.rooms.allows("team-42-design"));
        assert!(!who.rooms.allows("team-43-x") && !who.rooms.allows("gen"));
        assert!(who.watch.allows("bob") && !who.watch.allows("carol"));
        assert_eq!(who.expires.map(|m| m.0 / 1000), Some(now() + 600));
        let open = auth
            .check(&hs(claims(serde_json::json!({}))))
            .expect("valid");
        assert_eq!((open.rooms, open.watch), (Scope::Any, Scope::Any));
        let closed = JwtAuth::hs256(S)
            .expect("key")
            .default_audience(DefaultAudience::None);
        let none = closed
            .check(&hs(claims(serde_json::json!({}))))
            .expect("valid");
        assert!(!none.rooms.allows("general") && !none.watch.allows("bob"));
        let star = closed
            .check(&hs(claims(serde_json::json!({ "rooms": ["*"] }))))
            .expect("valid");
        assert!(star.rooms.allows("anything"));
        let huge: Vec<String> = (0..10_000).map(|i| format!("r{i}")).collect();
        for bad in [
            serde_json::json!({ "rooms": "general" }),
            serde_json::json!({ "rooms": [1, 2] }),
            serde_json::json!({ "rooms": huge }),
            serde_json::json!({ "rooms": ["has space"] }),
            serde_json::json!({ "watch": ["ok", "tab\tinside"] }),
        ] {
            let t = hs(claims(bad.clone()));
            assert!(auth.check(&t).is_err(), "{bad}");
        }
    }

    #[test]
    fn dev_auth_takes_the_token_as_the_user_name() {
        assert_eq!(
            DevAuth.check("bob").map(|i| i.user.to_string()),
            Ok("bob".into())
        );
        assert_eq!(DevAuth.check(""), Err(AuthError::Missing));
    }
}
