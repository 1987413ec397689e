//! Shared helpers: paths to the shared material, temporary spec folders, a gateway in front of
//! the Stripe stand-in.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `../shared` next to the repository (the design material and the corpus).
pub fn shared() -> PathBuf {
    root()
        .parent()
        .expect("the repository has a parent")
        .join("shared")
}

pub fn corpus() -> PathBuf {
    shared().join("corpus/stripe-capabilities")
}
