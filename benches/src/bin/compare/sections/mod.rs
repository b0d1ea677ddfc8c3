//! The sections, one module each, in the order `main` runs them; `--only NAME` runs
//! one. Each starts its hosts, compares them (a table of medians) and prints its
//! tables of ratios.

pub mod calls;
pub mod chain;
pub mod floor;
pub mod jwt;
pub mod limiter;
pub mod uncached;
