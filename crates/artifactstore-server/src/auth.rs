//! Bearer tokens and scopes (DESIGN.md §5 "Auth").
//!
//! Tokens are configured by the SHA-256 of their text, with a subject and
//! scopes; the token itself is never stored. Which scope a route needs is
//! decided in [`required_scope`], the one table of it; one middleware
//! enforces it after routing and hands the caller to the handler, whose
//! subject becomes the `actor` of the events the request causes.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::Digest as _;

use crate::problem::Problem;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Read,
    Write,
    Retention,
    Hold,
    /// Implies every other scope.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Read,
        Scope::Write,
        Scope::Retention,
        Scope::Hold,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Retention => "retention",
            Scope::Hold => "hold",
            Scope::Admin => "admin",
        }
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                format!("unknown scope {s:?} (expected read, write, retention, hold or admin)")
            })
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    scopes: BTreeSet<Scope>,
}

impl Principal {
    /// The caller when no tokens are configured: allowed everything.
    pub fn anonymous() -> Principal {
        Principal {
            subject: "anonymous".into(),
            scopes: BTreeSet::from([Scope::Admin]),
        }
    }
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }
}

/// One configured token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub subject: String,
    pub scopes: BTreeSet<Scope>,
    /// SHA-256 of the token text.
    pub sha256: [u8; 32],
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No tokens configured: everyone is `anonymous` with every scope. The
    /// binary allows this only on loopback addresses.
    Open,
    Tokens(Arc<HashMap<[u8; 32], Principal>>),
}

impl Auth {
    /// Token authentication; refuses empty subjects or scope lists and two
    /// entries with the same hash.
    pub fn tokens(entries: Vec<TokenEntry>) -> Result<Auth, String> {
        let mut map = HashMap::new();
        for e in entries {
            if e.subject.trim().is_empty() {
                return Err("a token has an empty subject".into());
            }
            if e.scopes.is_empty() {
                return Err(format!("token of {:?} has no scopes", e.subject));
            }
            let principal = Principal {
                subject: e.subject.clone(),
                scopes: e.scopes,
            };
            if map.insert(e.sha256, principal).is_some() {
                return Err(format!(
                    "two tokens have the same sha256 (one of them is {:?}'s)",
                    e.subject
                ));
            }
        }
        Ok(Auth::Tokens(Arc::new(map)))
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Auth::Open)
    }

    fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<Principal, Problem> {
        let map = match self {
            Auth::Open => return Ok(Principal::anonymous()),
            Auth::Tokens(map) => map,
        };
        let unauthorized = |detail: &str| {
            Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
                .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
        };
        let token = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("an Authorization: Bearer <token> header is required"))?;
        let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        map.get(&hash)
            .cloned()
            .ok_or_else(|| unauthorized("the token is not valid"))
    }
}

/// The scope each route needs; `None`: no authentication (probes). `route`
/// is the matched route template. A route missing here needs `admin`, so
/// forgetting to list one fails closed.
pub fn required_scope(method: &Method, route: &str) -> Option<Scope> {
    let writes = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    match route {
        "/healthz" | "/readyz" | "/openapi.json" => None,
        // An upload session is the uploader's: even its offset is `write`.
        "/uploads" | "/uploads/{id}" => Some(Scope::Write),
        "/blobs/{digest}" | "/packages" if writes => Some(Scope::Write),
        "/packages/{id}/retention/extensions" => Some(Scope::Retention),
        "/packages/{id}/retention/holds" | "/packages/{id}/retention/holds/{hold_id}/release" => {
            Some(Scope::Hold)
        }
        "/blobs/{digest}"
        | "/packages"
        | "/packages/{id}"
        | "/packages/{id}/manifest"
        | "/packages/{id}/files/{*path}"
        | "/packages/{id}/retention"
        | "/packages/{id}/retention/history"
        | "/retention/classes"
        | "/events"
        | "/metrics" => Some(Scope::Read),
        _ => Some(Scope::Admin),
    }
}

/// The middleware: authenticate, check the route's scope, pass the caller on.
pub(crate) async fn authorize(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let Some(scope) = route.and_then(|r| required_scope(req.method(), r.as_str())) else {
        return next.run(req).await;
    };
    let principal = match auth.authenticate(req.headers().get(header::AUTHORIZATION)) {
        Ok(p) => p,
        Err(problem) => return problem.into_response(),
    };
    if !principal.allows(scope) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this request needs the {:?} scope, which {:?} lacks",
                scope.as_str(),
                principal.subject
            ),
        )
        .with("required_scope", serde_json::json!(scope.as_str()))
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}
