//! Whole-system tests of the control plane; the crate holds nothing but them. They are in
//! `tests/`, one binary per concern, on the harness in `tests/common` (built on
//! `sandbox_ops::stack`): `cargo test -p system-tests --test fleet`.
