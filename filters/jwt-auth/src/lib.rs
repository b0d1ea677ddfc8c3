//! `jwt-auth`: Bearer JWT validation against the IdP's JWKS (issue 4).
//!
//! Until its policy lands this filter passes every request through; it already
//! refuses a configuration that is not a JSON object, so chains can be built and
//! loaded in both hosts today.

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    kit::glue::install_pass_through("jwt-auth");
}}
