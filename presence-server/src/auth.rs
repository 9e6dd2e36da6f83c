//! Who a connection (or an HTTP request) speaks for.
//!
//! The token is checked once, at the WebSocket upgrade or on each HTTP
//! request; a refused token never gets a socket. No frame can name another
//! user afterwards: the protocol has no field for it.

use presence_core::UserId;
use serde::Deserialize;

/// Why a token was refused. Every variant becomes HTTP 401; the detail is
/// logged, not sent, so a caller cannot probe which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("no token")]
    Missing,
    /// The token did not verify (signature, format, algorithm).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token names no usable user id.
    #[error("token names no valid user: {0}")]
    BadUser(String),
}

/// A JWT secret too short to be safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the JWT secret must be at least {} bytes", JwtAuth::MIN_SECRET_BYTES)]
pub struct WeakSecret;

/// Verifies the token presented by a client and names its user. Embedding
/// apps implement this to accept their own sessions.
pub trait Authenticator: Send + Sync + 'static {
    /// The user `token` speaks for, or why it is refused.
    fn authenticate(&self, token: &str) -> Result<UserId, AuthError>;
}

/// HS256 JSON Web Tokens: `sub` is the user id, `exp` is required and
/// `nbf` honoured when present, both with 30 s of leeway for clock skew
/// between issuer and server.
pub struct JwtAuth {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth").finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl JwtAuth {
    /// Leeway applied to `exp` and `nbf`, in seconds.
    pub const LEEWAY_SECS: u64 = 30;

    /// Shortest secret accepted, in bytes (HS256 keys should be 256 bits).
    pub const MIN_SECRET_BYTES: usize = 32;

    /// Verifies tokens signed with `secret` (at least
    /// [`MIN_SECRET_BYTES`](Self::MIN_SECRET_BYTES) bytes).
    pub fn hs256(secret: &[u8]) -> Result<Self, WeakSecret> {
        if secret.len() < Self::MIN_SECRET_BYTES {
            return Err(WeakSecret);
        }
        let key = jsonwebtoken::DecodingKey::from_secret(secret).map_err(|_| WeakSecret)?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = Self::LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self { key, validation })
    }
}

impl Authenticator for JwtAuth {
    fn authenticate(&self, token: &str) -> Result<UserId, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet (nbf)".into()),
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        UserId::new(data.claims.sub).map_err(|e| AuthError::BadUser(e.to_string()))
    }
}

/// Development mode: the token *is* the user name. Anyone can be anyone, so
/// the server logs a loud warning when it starts with this. Never use it in
/// production.
#[derive(Debug, Clone, Copy, Default)]
pub struct DevAuth;

impl Authenticator for DevAuth {
    fn authenticate(&self, token: &str) -> Result<UserId, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        UserId::new(token).map_err(|e| AuthError::BadUser(e.to_string()))
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
        assert_eq!(JwtAuth::hs256(b"short").err(), Some(WeakSecret));
        let auth = JwtAuth::hs256(S).expect("long enough");
        let ok = token(S, "ana", now() + 60);
        assert_eq!(
            auth.authenticate(&ok).map(|u| u.to_string()),
            Ok("ana".into())
        );
        let expired = token(S, "ana", now() - 3600);
        assert_eq!(auth.authenticate(&expired), Err(AuthError::Expired));
        let forged = token(b"0123456789abcdef0123456789abcdeX", "ana", now() + 60);
        assert!(matches!(
            auth.authenticate(&forged),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.authenticate("garbage"),
            Err(AuthError::Invalid(_))
        ));
        let bad_sub = token(S, "a b", now() + 60);
        assert!(matches!(
            auth.authenticate(&bad_sub),
            Err(AuthError::BadUser(_))
        ));
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
        assert!(auth.authenticate(&with_nbf(now() + 600)).is_err());
        assert!(
            auth.authenticate(&with_nbf(now() + 10)).is_ok(),
            "within the leeway"
        );
        assert!(auth.authenticate(&with_nbf(now() - 10)).is_ok());
    }

    #[test]
    fn dev_auth_takes_the_token_as_the_user_name() {
        assert_eq!(
            DevAuth.authenticate("bob").map(|u| u.to_string()),
            Ok("bob".into())
        );
        assert_eq!(DevAuth.authenticate(""), Err(AuthError::Missing));
    }
}
