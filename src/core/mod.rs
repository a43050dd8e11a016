//! Pure decisions and data: no I/O, no async, tested hardest.

pub mod crd;
pub mod fingerprint;
pub mod pod;
pub mod selection;
pub mod snapshot;
