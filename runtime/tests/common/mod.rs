#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Shared set-up for the runtime's integration tests: the fixture images and loopback
//! registries that `scripts/test.sh` prepares.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

/// A variable `scripts/test.sh` exports; the test fails (it does not skip) without it.
pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests through scripts/test.sh"))
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env("SHOAL_TEST_FIXTURES"))
}

/// The digests `scripts/fixtures.sh` wrote to image.env.
pub fn image_env() -> HashMap<String, String> {
    let text = std::fs::read_to_string(fixtures().join("image.env")).expect("image.env");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn registry() -> String {
    env("SHOAL_TEST_REGISTRY")
}

pub fn auth_registry() -> String {
    env("SHOAL_TEST_AUTH_REGISTRY")
}
