//! The end-to-end tests: one binary, a module per area, and one `support` module. Each
//! test runs the real xtask binary and says what else it needs (`support::require`).

// The longest test (the devbox family on two platforms) is in `agents`: libtest starts
// tests in name order, so it starts first and the rest run beside it.
mod agents;
mod archive;
mod build;
mod bundles;
mod checks;
mod cli;
mod github_app;
mod hostile;
mod limits;
mod mirror;
mod preflight;
mod prune;
mod release;
mod support;
mod tag_sets;
mod trust_shapes;
mod trust_sign;
mod trust_verify;
