//! The end-to-end tests: one binary, a module per area, and one `support` module. Each
//! test runs the real xtask binary and says what else it needs (`support::require`).

mod archive;
mod build;
mod checks;
mod cli;
mod devbox;
mod github_app;
mod hostile;
mod mirror;
mod preflight;
mod release;
mod support;
mod trust_sign;
mod trust_verify;
