//! Trust: who signed an image, checked before anything is written.

pub mod keys;
pub mod root;
pub mod bundle;
pub mod verify;

pub use verify::*;
