//! `oidc`: an OpenID Connect relying party. A browser without a session is sent to the
//! IdP (authorization code flow with `state`, `nonce` and PKCE S256), comes back with a
//! code, and from then on carries an encrypted session cookie; the upstream receives
//! the access token and the user's identity.
//!
//! The policy is plain Rust, tested natively: [`config`] (what the operator wrote),
//! [`url`] (URLs, forms, the open-redirect check), [`cookie`] (authenticated
//! encryption, chunking, `Set-Cookie`), [`session`] (what the cookies hold and whether
//! it is still good, the session cache, revocations), [`logout`] (which requests may
//! end a session: no cross-site ones), [`idp`] (discovery, the
//! authorization and token requests, ID-token and logout-token verification with
//! `kit::jwt`). The proxy-wasm glue in `filter` (wasm32 only) moves bytes between the
//! host and them, makes the `http_call`s and keeps shared data.

pub mod config;
pub mod cookie;
pub mod idp;
pub mod logout;
pub mod session;
pub mod url;

#[cfg(target_arch = "wasm32")]
mod filter;
