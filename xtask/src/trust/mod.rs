//! Trust: who signed an image, checked before anything is written.

pub mod bundle;
pub mod image;
pub mod keys;
pub mod root;
pub mod verify;

pub use verify::*;
